"""Inference keys through the wallet API: listed with their spend, created and revoked, scoped by role.

An owner manages every key of its wallet; a developer only the keys it owns
(member_id); a viewer reads them all. A key of another wallet, or one the
caller may not touch, is a 404: the API never reveals that it exists.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import invalid_request, not_found
from gateway.http import api_models as inputs
from gateway.http.admin_models import KeySpendPatch
from gateway.http.api_base import Caller, api, money
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.key_limits import key_limits, key_rules, limits_json, spend_limits
from gateway.http.notices import Subject
from gateway.http.state import STATE
from gateway.money.caps import apply_limits
from gateway.money.operations import Operations
from gateway.money.roles import Permission
from ledger.api_keys import SpendLimits
from ledger.book import ApiKeyRecord
from ledger.caps import CapScope
from ledger.errors import UnknownAccount
from ledger.history import Spend


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/keys", api(Permission.MANAGE_OWN_KEYS, list_keys, also=Permission.READ_ALL_KEYS))
    app.router.add_post("/api/keys", api(Permission.MANAGE_OWN_KEYS, create_key))
    app.router.add_delete("/api/keys/{id}", api(Permission.MANAGE_OWN_KEYS, revoke_key))
    app.router.add_patch("/api/keys/{id}", api(Permission.MANAGE_ALL_KEYS, patch_key))


def _visible(caller: Caller, key: ApiKeyRecord) -> bool:
    return caller.can(Permission.READ_ALL_KEYS) or key.member_id == caller.member_id


def _manageable(caller: Caller, key: ApiKeyRecord) -> bool:
    return caller.can(Permission.MANAGE_ALL_KEYS) or key.member_id == caller.member_id


def _spend(spend: Spend | None, caller: Caller) -> dict[str, Any]:
    spend = spend or Spend(0, 0, 0)
    return {"requests": spend.requests, "cost": money(spend.cost_nusd, caller.owners.settings)}


def key_json(key: ApiKeyRecord, caller: Caller, today: dict[str, Spend], month: dict[str, Spend]) -> dict[str, Any]:
    return {"id": key.key_id, "prefix": key.prefix, "name": key.name, "bot": key.bot, "member_id": key.member_id,
            "created_at": key.created_at, "revoked_at": key.revoked_at, **limits_json(key),
            "spend": {"today": _spend(today.get(key.key_id), caller), "month": _spend(month.get(key.key_id), caller)}}


async def list_keys(request: web.Request, caller: Caller) -> web.Response:
    keys = [k for k in await caller.owners.store.list_keys(caller.wallet_id) if _visible(caller, k)]
    today, month = await caller.owners.key_spend(caller.wallet_id, caller.now)
    return web.json_response({"object": "list", "data": [key_json(k, caller, today, month) for k in keys]})


async def create_key(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateKey, await json_body(request))
    state = request.app[STATE]
    expires_at, models = key_limits(body, state.routes)
    try:
        new, record = await Operations(state.book, state.holds).create_key(
            caller.wallet_id, body.name, body.bot, member_id=caller.member_id, expires_at=expires_at,
            allowed_models=models, bot_id=body.bot_id, limits=spend_limits(body), rules=key_rules(body))
    except UnknownAccount as exc:  # the wallet is the caller's own: only the bot can be unknown
        raise Refused(invalid_request(f"No bot {body.bot_id!r} in this wallet.", "bot_id", "unknown_bot")) from exc
    out = key_json(record, caller, {}, {})
    out["key"] = new.secret
    return web.json_response(out, status=201)


async def revoke_key(request: web.Request, caller: Caller) -> web.Response:
    key_id = valid(inputs.IdPath, dict(request.match_info)).id
    store = caller.owners.store
    key = next((k for k in await store.list_keys(caller.wallet_id) if k.key_id == key_id), None)
    if key is None or not _manageable(caller, key) or not await store.revoke_key(key_id):
        raise Refused(not_found(f"no active key {key_id!r}"))
    await request.app[STATE].notices.announce(Subject.KEY, key_id)
    return web.json_response({"id": key_id, "revoked": True})


async def patch_key(request: web.Request, caller: Caller) -> web.Response:
    """Replace a key's own spend limits (owners): every process holds against the new ones within a second."""
    key_id = valid(inputs.IdPath, dict(request.match_info)).id
    body = valid(KeySpendPatch, await json_body(request))
    state = request.app[STATE]
    key = next((k for k in await state.book.list_keys(caller.wallet_id) if k.key_id == key_id and k.active), None)
    if key is None:
        raise Refused(not_found(f"no active key {key_id!r}"))
    limits = spend_limits(body) or SpendLimits()
    changed = await state.book.set_key_limits(key_id, limits, key_rules(body))
    assert changed is not None, key_id  # listed as active just now; keys are never deleted
    await apply_limits(state.book, state.holds, caller.wallet_id, CapScope.KEY, key_id, limits)
    await state.notices.announce(Subject.KEY, key_id)
    today, month = await caller.owners.key_spend(caller.wallet_id, caller.now)
    return web.json_response(key_json(changed, caller, today, month))
