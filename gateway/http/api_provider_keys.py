"""Provider keys through the wallet API (BYOK): stored sealed, listed masked, revoked; owners manage them.

    POST   /api/provider-keys        {"provider": "openai", "api_key": "sk-...", "bot_id": null}
    GET    /api/provider-keys        every role: the live keys, by their last four characters only
    DELETE /api/provider-keys/{id}

A key is never shown back, in an answer or an error, and never logged: it is
sealed (gateway/money/secrets_box.py) before it reaches the book. Storing a
key for a provider and bot (or the whole wallet) replaces the live one. A
change is announced, so every gateway process uses the new key at once.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import ApiError, invalid_request, not_found
from gateway.http import api_models as inputs
from gateway.http.api_base import Caller, api
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.notices import Listener, Notice, Subject
from gateway.http.state import STATE
from gateway.money.byok import key_problem
from gateway.money.provider_keys import StoredKeys, sealed_record
from gateway.money.roles import Permission
from gateway.money.secrets_box import BoxUnavailable
from ledger.provider_keys import ProviderKeyLimit, ProviderKeyRecord


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/provider-keys", api(Permission.READ_PROVIDER_KEYS, list_keys))
    app.router.add_post("/api/provider-keys", api(Permission.MANAGE_PROVIDER_KEYS, store_key))
    app.router.add_delete("/api/provider-keys/{id}", api(Permission.MANAGE_PROVIDER_KEYS, revoke_key))


def listener(stored: StoredKeys) -> Listener:
    """Forget a wallet's stored keys when they change, here or in another process."""
    def hear(notice: Notice) -> None:
        if notice.subject is Subject.ALL:
            stored.forget_all()
        elif notice.subject is Subject.PROVIDER_KEYS:
            stored.forget(notice.subject_id)

    return hear


def key_json(key: ProviderKeyRecord) -> dict[str, Any]:
    return {"id": key.key_id, "object": "provider_key", "provider": key.provider, "bot_id": key.bot_id,
            "last4": key.last4, "created_at": key.created_at}


async def list_keys(request: web.Request, caller: Caller) -> web.Response:
    keys = await caller.owners.store.provider_keys(caller.wallet_id)
    return web.json_response({"object": "list", "data": [key_json(k) for k in keys]})


async def store_key(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateProviderKey, await json_body(request))
    state = request.app[STATE]
    if body.provider not in state.settings.providers:
        known = ", ".join(sorted(state.settings.providers)) or "none"
        raise Refused(invalid_request(f"No provider {body.provider!r} on this gateway (providers: {known}).",
                                      "provider", "unknown_provider"))
    problem = key_problem(body.api_key, state.settings.byok.key_chars_max)
    if problem is not None:
        raise Refused(invalid_request(f"Invalid value for 'api_key': {problem}.", "api_key", "invalid_provider_key"))
    if body.bot_id is not None:
        bot = await caller.owners.store.bot(body.bot_id)
        if bot is None or bot.wallet_id != caller.wallet_id:
            raise Refused(invalid_request(f"No bot {body.bot_id!r} in this wallet.", "bot_id", "unknown_bot"))
    box = state.byok.stored.box
    if isinstance(box, BoxUnavailable):
        raise Refused(ApiError(503, f"This gateway cannot store provider keys: {box.reason}. Ask its operator.",
                               "server_error", "provider_keys_unavailable", headers={"x-should-retry": "false"}))
    record = sealed_record(box, caller.wallet_id, body.bot_id, body.provider, body.api_key)
    try:
        stored = await state.book.store_provider_key(record, state.settings.byok.keys_per_wallet_max)
    except ProviderKeyLimit as exc:
        raise Refused(ApiError(409, f"{exc}: revoke one first.", "invalid_request_error", exc.code)) from None
    await state.notices.announce(Subject.PROVIDER_KEYS, caller.wallet_id)
    return web.json_response(key_json(stored), status=201)


async def revoke_key(request: web.Request, caller: Caller) -> web.Response:
    key_id = valid(inputs.IdPath, dict(request.match_info)).id
    state = request.app[STATE]
    if not await state.book.revoke_provider_key(caller.wallet_id, key_id):
        raise Refused(not_found(f"no live provider key {key_id!r}"))
    await state.notices.announce(Subject.PROVIDER_KEYS, caller.wallet_id)
    return web.json_response({"id": key_id, "object": "provider_key", "deleted": True})
