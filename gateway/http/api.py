"""The wallet API for owners (/api/*): its routes, and the wallet's overview, history and deposits.

Authentication, permissions and refusals are in api_base.py; keys and
members in api_keys.py and api_members.py. Amounts are Money objects
({"usd", "nusd", "display"?}); times ISO 8601 UTC with a Z.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from config.settings import WalletSettings
from gateway.errors import invalid_request, not_found
from gateway.http import api_bots, api_deposits, api_keyless, api_keys, api_members, api_provider_keys, api_topup, api_webhooks
from gateway.http import api_models as inputs
from gateway.http.api_base import MANAGEMENT_KEYS, Caller, ManagementKeys, api, money, org_of
from gateway.http.api_deposits import auto_reload_json, deposit_json
from gateway.http.bodies import Refused, json_body, valid
from gateway.money.roles import Permission
from gateway.money.wallet_owners import describe
from ledger.history import Entry, EntryQuery
from ledger.money import parse_usd
from ledger.owners import Org


def add_routes(app: web.Application, settings: WalletSettings) -> None:
    app[MANAGEMENT_KEYS] = ManagementKeys(settings.management_key_cache_ttl_s)
    app.router.add_get("/api/wallet", api(Permission.READ_WALLET, get_wallet))
    app.router.add_patch("/api/wallet", api(Permission.MANAGE_WALLET_SETTINGS, patch_wallet))
    app.router.add_get("/api/wallet/transactions", api(Permission.READ_OWN_USAGE, transactions))
    app.router.add_get("/api/wallet/deposits", api(Permission.READ_DEPOSITS, deposits))
    api_keys.add_routes(app)
    api_bots.add_routes(app)
    api_webhooks.add_routes(app)
    api_members.add_routes(app)
    api_topup.add_routes(app)
    api_deposits.add_routes(app)
    api_keyless.add_routes(app)
    api_provider_keys.add_routes(app)


async def get_wallet(request: web.Request, caller: Caller) -> web.Response:
    return web.json_response(await overview_json(caller, await org_of(caller)))


async def overview_json(caller: Caller, org: Org) -> dict[str, Any]:
    view = await caller.owners.overview(org, caller.now)
    s = caller.owners.settings
    f = view.figures
    reload = await caller.owners.store.auto_reload(org.wallet_id)
    expiring = await caller.owners.store.next_expiry(org.wallet_id)
    return {
        "id": org.wallet_id, "name": org.name,
        "balance": money(view.balance_nusd, s), "held": money(view.held_nusd, s),
        "available": money(view.available_nusd, s),
        "used": {"month": money(f.month.charged_nusd, s), "lifetime": money(f.spent_nusd, s)},
        "requests": {"month": f.month.requests, "lifetime": f.requests},
        "deposited": money(f.deposited_nusd, s), "spent": money(f.spent_nusd, s),
        "refunded": money(f.refunded_nusd, s), "auto_reload": auto_reload_json(reload, s),
        # Credit validity: the soonest credits to expire, and when (null: none expire).
        "next_expiry": None if expiring is None else {"amount": money(expiring.amount_nusd, s),
                                                      "expires_at": expiring.expires_at},
        "warning": {"level": view.warning.value, "low_threshold": money(view.low_threshold_nusd, s),
                    "critical_threshold": money(view.critical_threshold_nusd, s)},
    }


async def patch_wallet(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.WalletSettingsPatch, await json_body(request))
    threshold = None if body.low_balance_threshold is None else parse_usd(body.low_balance_threshold)
    org = await caller.owners.store.set_org_low_balance(caller.wallet_id, threshold)
    return web.json_response(await overview_json(caller, org))


async def transactions(request: web.Request, caller: Caller) -> web.Response:
    query = valid(inputs.TransactionsQuery, dict(request.query))
    store = caller.owners.store
    kinds = query.kinds()
    known = await store.transfer_kinds()
    unknown = [k for k in kinds if k not in known]
    if unknown:
        raise Refused(invalid_request(f"Unknown transaction type {unknown[0]!r}; the types are: {', '.join(sorted(known))}.",
                                      "type", "invalid_value"))
    key_ids: tuple[str, ...] | None = None
    if not caller.can(Permission.READ_ALL_USAGE):  # a developer: its own keys' usage only
        own = [k.key_id for k in await store.list_keys(caller.wallet_id) if k.member_id == caller.member_id]
        key_ids = tuple(own)
        kinds = ("usage",) if not kinds or "usage" in kinds else ("__none__",)
        if kinds == ("__none__",):
            return web.json_response({"object": "list", "data": [], "total": 0, "has_more": False, "next_cursor": None})
    try:
        page = await store.entries(EntryQuery(caller.wallet_id, query.limit, kinds, query.from_, query.to, key_ids,
                                              query.cursor))
    except ValueError as exc:
        raise Refused(invalid_request("Invalid cursor: pass next_cursor from a previous page.", "cursor",
                                      "invalid_value")) from exc
    s = caller.owners.settings
    return web.json_response({"object": "list", "data": [entry_json(e, s) for e in page.items], "total": page.total,
                              "has_more": page.next_cursor is not None, "next_cursor": page.next_cursor})


def entry_json(entry: Entry, s: WalletSettings) -> dict[str, Any]:
    out: dict[str, Any] = {"id": entry.entry_id, "type": entry.kind, "description": describe(entry),
                           "amount": money(entry.amount_nusd, s), "created_at": entry.created_at,
                           "request_id": entry.request_id}
    if entry.usage is not None:
        u = entry.usage
        out["usage"] = {"key_id": u.key_id, "model": u.model, "endpoint": u.endpoint, "status": u.status,
                        "prompt_tokens": u.prompt_tokens, "cached_tokens": u.cached_tokens,
                        "completion_tokens": u.completion_tokens, "cost": money(u.cost_nusd, s)}
    return out


async def deposits(request: web.Request, caller: Caller) -> web.Response:
    query = valid(inputs.DepositsQuery, dict(request.query))
    if query.session_id is not None:  # Aerostack's "verify": the success page knows the session id
        found = await caller.owners.store.deposit_by_ref(query.session_id)
        if found is None or found.wallet_id != caller.wallet_id:
            raise Refused(not_found(f"no deposit for session {query.session_id!r}"))
        return web.json_response(deposit_json(found, caller.owners.settings))
    try:
        page = await caller.owners.store.list_deposits(caller.wallet_id, query.limit, query.cursor)
    except ValueError as exc:
        raise Refused(invalid_request("Invalid cursor: pass next_cursor from a previous page.", "cursor",
                                      "invalid_value")) from exc
    s = caller.owners.settings
    return web.json_response({"object": "list", "data": [deposit_json(d, s) for d in page.items],
        "total": page.total, "has_more": page.next_cursor is not None, "next_cursor": page.next_cursor})
