"""Keyless purchase over HTTP (no key needed): start a Checkout, reveal the keys once, recover them.

    POST /api/keyless/checkout            {amount | tier, success_url, cancel_url}
    POST /api/keyless/{session_id}/reveal
    POST /api/keyless/{session_id}/recover {recovery_code}

The service is gateway/money/keyless.py; these routes exist only with `[stripe] enabled`.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field

from gateway.http.admin_models import UsdAmount
from gateway.http.api_base import guarded, owners_of
from gateway.http.api_deposits import URL_CHARS_MAX, payments_of, refused
from gateway.http.api_models import ApiInput
from gateway.http.api_topup import quote_json
from gateway.http.bodies import json_body, valid
from gateway.http.state import STATE
from gateway.money.keyless import KeylessKeys, KeylessPurchases
from gateway.money.operations import Operations
from ledger.money import parse_usd
from payments.checkout import TopupRefused
from payments.tiers import QuoteError, quote

SESSION_ID_CHARS_MAX = 255


class StartKeyless(ApiInput):
    amount: UsdAmount | None = None
    tier: str | None = Field(None, min_length=1, max_length=64)
    success_url: str = Field(min_length=1, max_length=URL_CHARS_MAX)
    cancel_url: str = Field(min_length=1, max_length=URL_CHARS_MAX)


class Recover(ApiInput):
    recovery_code: str = Field(min_length=1, max_length=128)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/api/keyless/checkout", guarded(start))
    app.router.add_post("/api/keyless/{session_id}/reveal", guarded(reveal))
    app.router.add_post("/api/keyless/{session_id}/recover", guarded(recover))


def _service(request: web.Request) -> KeylessPurchases:
    payments, _ = payments_of(request)
    state = request.app[STATE]
    return KeylessPurchases(payments.checkout, owners_of(request), Operations(state.book, state.holds))


async def start(request: web.Request) -> web.Response:
    service = _service(request)
    settings = request.app[STATE].settings
    body = valid(StartKeyless, await json_body(request))
    priced = quote(settings.topup, None if body.amount is None else parse_usd(body.amount), body.tier)
    if isinstance(priced, QuoteError):
        raise refused(priced)
    started = await service.start(priced, body.success_url, body.cancel_url, settings.topup.credit_validity_days)
    if isinstance(started, TopupRefused):
        raise refused(started)
    session_id = started.started.session.session_id
    return web.json_response({
        "checkout_url": started.started.session.url, "session_id": session_id,
        "expires_at": started.started.session.expires_at,
        # Shown once, here: keep it. It gets fresh keys if the keys' page is lost.
        "recovery_code": started.recovery_code,
        "reveal_url": f"/api/keyless/{session_id}/reveal", "quote": quote_json(priced, owners_of(request).settings),
    }, status=201)


async def reveal(request: web.Request) -> web.Response:
    return _keys(await _service(request).reveal(_session_id(request)))


async def recover(request: web.Request) -> web.Response:
    body = valid(Recover, await json_body(request))
    return _keys(await _service(request).recover(_session_id(request), body.recovery_code))


def _session_id(request: web.Request) -> str:
    return request.match_info["session_id"][:SESSION_ID_CHARS_MAX]


def _keys(found: KeylessKeys | TopupRefused) -> web.Response:
    if isinstance(found, TopupRefused):
        raise refused(found)
    return web.json_response({"wallet": found.wallet_id, "api_key": found.api_key,
                              "management_key": found.management_key,
                              "note": "Shown once. The recovery code from the purchase issues fresh keys."})
