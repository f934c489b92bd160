"""Card top-ups through the wallet API: start a Checkout, verify a deposit, auto-reload, notifications.

Routes exist only when `[stripe] enabled`; the money moves in payments/
(checkout.py starts, webhooks.py credits). A deposit is credited by Stripe's
webhook, never by these routes: GET /api/wallet/deposits/{id} only says what
the ledger knows, Aerostack's "verify".
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from config.payments import NUSD_PER_CENT
from config.settings import Settings, WalletSettings
from gateway.errors import ApiError, invalid_request, not_found
from gateway.http.admin_models import UsdAmount
from gateway.http.api_base import Caller, api, money
from gateway.http.api_models import ApiInput
from gateway.http.api_topup import quote_json
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.state import STATE
from gateway.money.roles import Permission
from gateway.money.topups import Payments
from ledger.money import parse_usd
from ledger.owners import Deposit
from ledger.payments import AutoReload
from payments.checkout import StartedCheckout, TopupRefused
from payments.tiers import Quote, QuoteError, quote

URL_CHARS_MAX = 2048  # Stripe's own limit on success_url and cancel_url is 5000


class StartDeposit(ApiInput):
    amount: UsdAmount | None = None
    tier: str | None = Field(None, min_length=1, max_length=64)
    success_url: str = Field(min_length=1, max_length=URL_CHARS_MAX)
    cancel_url: str = Field(min_length=1, max_length=URL_CHARS_MAX)
    save_card: bool | None = None  # default: save it when auto-reload is on


class AutoReloadInput(ApiInput):
    enabled: bool
    threshold: UsdAmount
    amount: UsdAmount


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/wallet/deposits", api(Permission.TOP_UP, start_deposit))
    app.router.add_get("/api/wallet/deposits/{id}", api(Permission.READ_DEPOSITS, get_deposit))
    app.router.add_get("/api/wallet/auto-reload", api(Permission.READ_WALLET, get_auto_reload))
    app.router.add_put("/api/wallet/auto-reload", api(Permission.TOP_UP, put_auto_reload))
    app.router.add_get("/api/wallet/notifications", api(Permission.READ_WALLET, notifications))


def payments_of(request: web.Request) -> tuple[Payments, Settings]:
    state = request.app[STATE]
    if state.payments is None:
        raise Refused(ApiError(404, "Card payments are not enabled on this gateway.", "invalid_request_error",
                               "payments_disabled"))
    return state.payments, state.settings


def refused(error: TopupRefused | QuoteError) -> Refused:
    kind = "invalid_request_error" if error.status < 500 else "server_error"
    return Refused(ApiError(error.status, error.message, kind, error.code, error.param))


async def start_deposit(request: web.Request, caller: Caller) -> web.Response:
    payments, settings = payments_of(request)
    body = valid(StartDeposit, await json_body(request))
    priced = quote(settings.topup, None if body.amount is None else parse_usd(body.amount), body.tier)
    if isinstance(priced, QuoteError):
        raise refused(priced)
    reload = await caller.owners.store.auto_reload(caller.wallet_id)
    save_card = body.save_card if body.save_card is not None else bool(reload and reload.enabled)
    started = await payments.checkout.start(caller.wallet_id, priced, body.success_url, body.cancel_url,
                                            save_card=save_card, customer_ref=reload.customer_ref if reload else None,
                                            validity_days=settings.topup.credit_validity_days)
    if isinstance(started, TopupRefused):
        raise refused(started)
    return web.json_response(started_json(started, priced, caller), status=201)


def started_json(started: StartedCheckout, priced: Quote, caller: Caller) -> dict[str, Any]:
    s = caller.owners.settings
    return {"deposit": deposit_json(started.deposit, s), "checkout_url": started.session.url,
            "session_id": started.session.session_id, "expires_at": started.session.expires_at,
            "quote": quote_json(priced, s)}


async def get_deposit(request: web.Request, caller: Caller) -> web.Response:
    wanted = request.match_info["id"]
    store = caller.owners.store
    # A Checkout Session id works too: the success page has {CHECKOUT_SESSION_ID}, not our order number.
    found = await (store.deposit_by_ref(wanted) if wanted.startswith("cs_") else store.deposit(wanted))
    if found is None or found.wallet_id != caller.wallet_id:
        raise Refused(not_found(f"no deposit {wanted!r}"))
    return web.json_response(deposit_json(found, caller.owners.settings))


def deposit_json(d: Deposit, s: WalletSettings) -> dict[str, Any]:
    return {"id": d.deposit_id, "method": d.method, "purpose": d.purpose, "status": d.status.value,
            "credited": d.status.value == "completed", "amount_credited": money(d.amount_credited_nusd, s),
            "discount": money(d.discount_nusd, s), "amount_paid": {"amount": d.paid_amount, "currency": d.paid_currency},
            "tier": d.tier, "session_id": d.external_ref, "created_at": d.created_at, "completed_at": d.completed_at}


async def get_auto_reload(request: web.Request, caller: Caller) -> web.Response:
    payments_of(request)
    reload = await caller.owners.store.auto_reload(caller.wallet_id)
    return web.json_response(auto_reload_json(reload, caller.owners.settings))


async def put_auto_reload(request: web.Request, caller: Caller) -> web.Response:
    payments, settings = payments_of(request)
    body = valid(AutoReloadInput, await json_body(request))
    threshold, amount = parse_usd(body.threshold), parse_usd(body.amount)
    least = settings.topup.auto_reload_min_nusd
    if amount < least or amount > settings.topup.max_nusd:
        raise Refused(invalid_request(
            f"The reload amount must be between {money(least, caller.owners.settings)['usd']} and "
            f"{money(settings.topup.max_nusd, caller.owners.settings)['usd']} USD.", "amount", "amount_out_of_range"))
    if amount % NUSD_PER_CENT or threshold % NUSD_PER_CENT:
        param = "amount" if amount % NUSD_PER_CENT else "threshold"
        raise Refused(invalid_request("Amounts are whole cents.", param, "invalid_amount"))
    reload = await caller.owners.store.set_auto_reload(caller.wallet_id, body.enabled, threshold, amount)
    await payments.reloader.refresh()
    if reload.ready:
        wallet = await caller.owners.store.wallet(caller.wallet_id)
        if wallet is not None and wallet.balance_nusd < threshold:
            payments.reloader.trigger(caller.wallet_id)  # already below: reload now, not at the next request
    return web.json_response(auto_reload_json(reload, caller.owners.settings))


def auto_reload_json(reload: AutoReload | None, s: WalletSettings) -> dict[str, Any] | None:
    if reload is None:
        return None
    return {"enabled": reload.enabled, "threshold": money(reload.threshold_nusd, s), "amount": money(reload.amount_nusd, s),
            "card_saved": reload.payment_method_ref is not None, "paused": reload.paused_reason is not None,
            "paused_reason": reload.paused_reason, "in_flight": reload.in_flight_deposit_id is not None,
            # Enabled without a card: the next Checkout saves one (setup_future_usage).
            "needs_card": reload.enabled and reload.payment_method_ref is None}


async def notifications(request: web.Request, caller: Caller) -> web.Response:
    found = await caller.owners.store.notifications(caller.wallet_id, 50)
    return web.json_response({"object": "list", "data": [
        {"id": n.notification_id, "kind": n.kind, "message": n.message, "created_at": n.created_at} for n in found]})
