"""The operator's HTTP API, behind a separate admin token (settings.admin_token).

Amounts cross this edge as USD decimal strings and are integers inside.
"""

from __future__ import annotations

import hmac
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from gateway.errors import ApiError, invalid_request, not_found
from gateway.operations import Operations
from gateway.state import STATE
from ledger.errors import AccountExists, IdempotencyConflict, UnknownAccount
from ledger.money import MoneyFormatError, format_usd, parse_usd

Handler = Callable[[web.Request, Operations], Awaitable[web.Response]]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/wallets", _admin(create_wallet))
    app.router.add_get("/admin/wallets/{wallet_id}", _admin(show_wallet))
    app.router.add_post("/admin/wallets/{wallet_id}/credits", _admin(credit_wallet))
    app.router.add_get("/admin/wallets/{wallet_id}/transactions", _admin(wallet_transactions))
    app.router.add_post("/admin/keys", _admin(create_key))
    app.router.add_get("/admin/keys", _admin(list_keys))
    app.router.add_delete("/admin/keys/{key_id}", _admin(revoke_key))


def _authorized(request: web.Request) -> bool:
    token = request.app[STATE].settings.admin_token
    if token is None:
        return False
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.get_secret_value().encode())


def _admin(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        if not _authorized(request):
            return ApiError(401, "Admin endpoints need 'Authorization: Bearer <admin token>'.", "invalid_request_error",
                            "invalid_admin_token").response()
        state = request.app[STATE]
        try:
            return await handler(request, Operations(state.book, state.holds))
        except UnknownAccount as exc:
            return not_found(str(exc)).response()
        except (AccountExists, IdempotencyConflict) as exc:
            return ApiError(409, str(exc), "invalid_request_error", exc.code).response()
        except (ValueError, MoneyFormatError) as exc:
            return invalid_request(str(exc)).response()

    return wrapped


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        payload = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ValueError("the body must be a JSON object") from exc
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object")
    return payload


def _wallet_json(view: Any) -> dict[str, Any]:
    wallet = view.wallet
    return {"id": wallet.wallet_id, "name": wallet.name, "balance": format_usd(wallet.balance_nusd),
            "balance_nusd": wallet.balance_nusd, "held_nusd": view.held_nusd, "available": format_usd(view.available_nusd)}


async def create_wallet(request: web.Request, ops: Operations) -> web.Response:
    payload = await _json(request)
    wallet = await ops.create_wallet(str(payload.get("id", "")), payload.get("name"))
    return web.json_response(_wallet_json(await ops.show(wallet.wallet_id)), status=201)


async def show_wallet(request: web.Request, ops: Operations) -> web.Response:
    return web.json_response(_wallet_json(await ops.show(request.match_info["wallet_id"])))


async def credit_wallet(request: web.Request, ops: Operations) -> web.Response:
    payload = await _json(request)
    amount = parse_usd(str(payload.get("amount", "")))
    if amount <= 0:
        raise ValueError("amount must be positive")
    outcome, _ = await ops.credit(request.match_info["wallet_id"], amount, payload.get("transfer_id"), payload.get("memo"))
    body = {"outcome": outcome.value, **_wallet_json(await ops.show(request.match_info["wallet_id"]))}
    return web.json_response(body, status=201 if outcome.value == "created" else 200)


async def wallet_transactions(request: web.Request, ops: Operations) -> web.Response:
    records = await ops.transactions(request.match_info["wallet_id"], int(request.query.get("limit", "50")))
    return web.json_response({"data": [
        {"id": r.transfer.transfer_id, "kind": r.transfer.kind.value, "from": r.transfer.debit_account,
         "to": r.transfer.credit_account, "amount": format_usd(r.transfer.amount_nusd),
         "amount_nusd": r.transfer.amount_nusd, "request_id": r.transfer.request_id, "memo": r.transfer.memo,
         "created_at": r.created_at}
        for r in records]})


async def create_key(request: web.Request, ops: Operations) -> web.Response:
    payload = await _json(request)
    new, record = await ops.create_key(str(payload.get("wallet", "")), payload.get("name"), payload.get("bot"))
    return web.json_response({"id": record.key_id, "key": new.secret, "prefix": record.prefix,
                              "wallet": record.wallet_id, "name": record.name, "bot": record.bot}, status=201)


async def list_keys(request: web.Request, ops: Operations) -> web.Response:
    keys = await ops.book.list_keys(request.query.get("wallet"))
    return web.json_response({"data": [
        {"id": k.key_id, "prefix": k.prefix, "wallet": k.wallet_id, "name": k.name, "bot": k.bot,
         "created_at": k.created_at, "revoked_at": k.revoked_at} for k in keys]})


async def revoke_key(request: web.Request, ops: Operations) -> web.Response:
    key_id = request.match_info["key_id"]
    if not await ops.book.revoke_key(key_id):
        return not_found(f"no active key {key_id!r}").response()
    request.app[STATE].keys.forget(key_id)
    return web.json_response({"id": key_id, "revoked": True})
