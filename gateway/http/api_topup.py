"""GET /api/topup/tiers and POST /api/topup/quote: what a top-up costs before anyone pays (AISA's confirmation).

Pure configuration (`[topup]`): they answer with Stripe off too, so an owner
can see the prices; paying needs `[stripe] enabled` (api_deposits.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import Field

from config.settings import WalletSettings
from gateway.errors import ApiError
from gateway.http.admin_models import UsdAmount
from gateway.http.api_base import Caller, api, money
from gateway.http.api_models import ApiInput
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.state import STATE
from gateway.money.roles import Permission
from ledger.money import parse_usd
from payments.tiers import Quote, QuoteError, priced, quote


class QuoteInput(ApiInput):
    amount: UsdAmount | None = None
    tier: str | None = Field(None, min_length=1, max_length=64)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/topup/tiers", api(Permission.READ_WALLET, tiers))
    app.router.add_post("/api/topup/quote", api(Permission.READ_WALLET, post_quote))


async def tiers(request: web.Request, caller: Caller) -> web.Response:
    topup = request.app[STATE].settings.topup
    s = caller.owners.settings
    return web.json_response({
        "currency": "usd",
        "tiers": [{"id": t.id, **quote_json(priced(t.amount_nusd, t), s)} for t in topup.tiers],
        "custom": {"min": money(topup.min_nusd, s), "max": money(topup.max_nusd, s),
                   "earns_tiers": topup.custom_amounts_earn_tiers},
    })


async def post_quote(request: web.Request, caller: Caller) -> web.Response:
    body = valid(QuoteInput, await json_body(request))
    found = quote(request.app[STATE].settings.topup, None if body.amount is None else parse_usd(body.amount), body.tier)
    if isinstance(found, QuoteError):
        raise quote_refused(found)
    return web.json_response(quote_json(found, caller.owners.settings))


def quote_refused(error: QuoteError) -> Refused:
    return Refused(ApiError(error.status, error.message, "invalid_request_error", error.code, error.param))


def quote_json(found: Quote, s: WalletSettings) -> dict[str, Any]:
    return {"amount": money(found.amount_nusd, s), "discount": money(found.discount_nusd, s),
            "payable": money(found.payable_nusd, s), "credited": money(found.amount_nusd, s),
            "tier": found.tier_id, "discount_percent": str(found.discount_percent)}
