"""The operator's HTTP API, behind a separate admin token (settings.admin_token).

Registered only when an admin token is configured; without one, /admin/* is
a 404 like any unknown path. Every input (body, query, path id) is validated by
a model in gateway.admin_models before it reaches the ledger, and every
refusal is an OpenAI-shaped JSON 4xx. Amounts cross this edge as USD decimal
strings and are integers inside.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.errors import ApiError, invalid_request, not_found
from gateway.http import admin_models as inputs
from gateway.http.auth import bearer_matches
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.key_limits import key_limits, key_rules, limits_json, spend_limits
from gateway.http.notices import Subject
from gateway.http.responses import error_response
from gateway.http.state import STATE
from gateway.money.operations import Operations, new_credit_id
from ledger.errors import AccountExists, IdempotencyConflict, UnknownAccount
from ledger.holds import HoldStoreUnavailable
from ledger.money import MoneyFormatError, format_usd, parse_usd
from ledger.owners import OrgExists

Handler = Callable[[web.Request, Operations], Awaitable[web.Response]]


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/wallets", _admin(create_wallet))
    app.router.add_get("/admin/wallets/{wallet_id}", _admin(show_wallet))
    app.router.add_post("/admin/wallets/{wallet_id}/credits", _admin(credit_wallet))
    app.router.add_get("/admin/wallets/{wallet_id}/transactions", _admin(wallet_transactions))
    app.router.add_post("/admin/orgs", _admin(create_org))
    app.router.add_post("/admin/requests/{request_id}/refund", _admin(refund_request))
    app.router.add_post("/admin/keys", _admin(create_key))
    app.router.add_get("/admin/keys", _admin(list_keys))
    app.router.add_delete("/admin/keys/{key_id}", _admin(revoke_key))


def _admin(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        state = request.app[STATE]
        if not bearer_matches(request.headers.get("Authorization"), state.settings.admin_token):
            return error_response(ApiError(401, "Admin endpoints need 'Authorization: Bearer <admin token>'.",
                                           "invalid_request_error", "invalid_admin_token"))
        try:
            return await handler(request, Operations(state.book, state.holds))
        except Refused as refused:
            return error_response(refused.error)
        except UnknownAccount as exc:
            return error_response(not_found(str(exc)))
        except (AccountExists, IdempotencyConflict, OrgExists) as exc:
            return error_response(ApiError(409, str(exc), "invalid_request_error", exc.code))
        except (ValueError, MoneyFormatError) as exc:
            return error_response(invalid_request(str(exc)))

    return wrapped


def _wallet_json(view: Any) -> dict[str, Any]:
    wallet = view.wallet
    return {"id": wallet.wallet_id, "name": wallet.name, "balance": format_usd(wallet.balance_nusd),
            "balance_nusd": wallet.balance_nusd, "held_nusd": view.held_nusd, "available": format_usd(view.available_nusd)}


async def create_wallet(request: web.Request, ops: Operations) -> web.Response:
    payload = valid(inputs.CreateWallet, await json_body(request))
    wallet = await ops.create_wallet(payload.id, payload.name)
    return web.json_response(_wallet_json(await ops.show(wallet.wallet_id)), status=201)


async def show_wallet(request: web.Request, ops: Operations) -> web.Response:
    wallet_id = valid(inputs.WalletPath, dict(request.match_info)).wallet_id
    return web.json_response(_wallet_json(await ops.show(wallet_id)))


async def credit_wallet(request: web.Request, ops: Operations) -> web.Response:
    wallet_id = valid(inputs.WalletPath, dict(request.match_info)).wallet_id
    payload = valid(inputs.Credit, await json_body(request))
    amount = parse_usd(payload.amount)
    if amount <= 0:
        raise ValueError("amount must be positive")
    # The id used is in the answer, generated or not, so a retry can reuse it.
    transfer_id = payload.transfer_id or new_credit_id()
    outcome, wallet = await ops.credit(wallet_id, amount, transfer_id, payload.memo)
    try:
        view = _wallet_json(await ops.show(wallet_id))
    except HoldStoreUnavailable:
        # Committed, so answered as done; held amounts are unknown until the hold store is back.
        view = {"id": wallet.wallet_id, "name": wallet.name, "balance": format_usd(wallet.balance_nusd),
                "balance_nusd": wallet.balance_nusd}
    body = {"outcome": outcome.value, "transfer_id": transfer_id, **view}
    return web.json_response(body, status=201 if outcome.value == "created" else 200)


async def wallet_transactions(request: web.Request, ops: Operations) -> web.Response:
    wallet_id = valid(inputs.WalletPath, dict(request.match_info)).wallet_id
    query = valid(inputs.TransactionsQuery, dict(request.query))
    records = await ops.transactions(wallet_id, query.limit)
    return web.json_response({"data": [
        {"id": r.transfer.transfer_id, "kind": r.transfer.kind.value, "from": r.transfer.debit_account,
         "to": r.transfer.credit_account, "amount": format_usd(r.transfer.amount_nusd),
         "amount_nusd": r.transfer.amount_nusd, "request_id": r.transfer.request_id, "memo": r.transfer.memo,
         "created_at": r.created_at}
        for r in records]})


async def refund_request(request: web.Request, ops: Operations) -> web.Response:
    """A settled request's charge back to its wallet, once: a retry answers 200 with the same refund."""
    request_id = valid(inputs.RequestPath, dict(request.match_info)).request_id
    payload = valid(inputs.Refund, await json_body(request))
    outcome, amount, wallet = await ops.refund(request_id, payload.reason)
    body = {"outcome": outcome.value, "request_id": request_id, "amount": format_usd(amount), "amount_nusd": amount,
            "wallet": wallet.wallet_id, "balance": format_usd(wallet.balance_nusd)}
    return web.json_response(body, status=201 if outcome.value == "created" else 200)


async def create_org(request: web.Request, ops: Operations) -> web.Response:
    """An organisation for a wallet (created if missing) and its first owner; the owner's management key, once."""
    from gateway.money.wallet_owners import WalletOwners

    payload = valid(inputs.CreateOrg, await json_body(request))
    state = request.app[STATE]
    org, owner, new = await WalletOwners(state.book, state.holds, state.settings.wallet).create_org(
        payload.wallet, payload.name, payload.owner_name)
    return web.json_response({"wallet": org.wallet_id, "name": org.name, "created_at": org.created_at,
                              "owner": {"id": owner.member_id, "name": owner.name, "role": owner.role.value},
                              "management_key": {"id": new.key_id, "prefix": new.display_prefix, "key": new.secret}},
                             status=201)


async def create_key(request: web.Request, ops: Operations) -> web.Response:
    payload = valid(inputs.CreateKey, await json_body(request))
    expires_at, models = key_limits(payload, request.app[STATE].routes)
    new, record = await ops.create_key(payload.wallet, payload.name, payload.bot, expires_at=expires_at,
                                       allowed_models=models, bot_id=payload.bot_id, limits=spend_limits(payload),
                                       rules=key_rules(payload))
    return web.json_response({"id": record.key_id, "key": new.secret, "prefix": record.prefix,
                              "wallet": record.wallet_id, "name": record.name, "bot": record.bot,
                              **limits_json(record)}, status=201)


async def list_keys(request: web.Request, ops: Operations) -> web.Response:
    query = valid(inputs.KeysQuery, dict(request.query))
    keys = await ops.book.list_keys(query.wallet)
    return web.json_response({"data": [
        {"id": k.key_id, "prefix": k.prefix, "wallet": k.wallet_id, "name": k.name, "bot": k.bot,
         "created_at": k.created_at, "revoked_at": k.revoked_at, **limits_json(k)}
        for k in keys]})


async def revoke_key(request: web.Request, ops: Operations) -> web.Response:
    key_id = valid(inputs.KeyPath, dict(request.match_info)).key_id
    if not await ops.book.revoke_key(key_id):
        return error_response(not_found(f"no active key {key_id!r}"))
    await request.app[STATE].notices.announce(Subject.KEY, key_id)
    return web.json_response({"id": key_id, "revoked": True})
