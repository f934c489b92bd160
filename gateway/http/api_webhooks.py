"""Webhook endpoints and balance alerts through the wallet API (owners manage them; viewers read them).

An endpoint's signing secret is shown once, when it is made, and sealed at
rest with the master key (MW_MASTER_KEY): without one, no endpoint can be
made (a 503 saying why). Every delivery attempt is listed under
/api/webhooks/{id}/deliveries.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import ApiError, invalid_request, not_found
from gateway.http import api_models as inputs
from gateway.http.api_base import Caller, api, money
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.state import STATE
from gateway.money.roles import Permission
from gateway.money.secrets_box import BoxUnavailable
from gateway.money.webhook_delivery import new_secret, secret_context
from ledger.money import parse_usd
from ledger.webhooks import ALERTS_PER_WALLET_MAX, ENDPOINTS_PER_WALLET_MAX, BalanceAlert, Endpoint


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/webhooks", api(Permission.READ_WEBHOOKS, list_webhooks))
    app.router.add_post("/api/webhooks", api(Permission.MANAGE_WEBHOOKS, create_webhook))
    app.router.add_delete("/api/webhooks/{id}", api(Permission.MANAGE_WEBHOOKS, delete_webhook))
    app.router.add_get("/api/webhooks/{id}/deliveries", api(Permission.READ_WEBHOOKS, list_deliveries))
    app.router.add_get("/api/alerts", api(Permission.READ_WEBHOOKS, list_alerts))
    app.router.add_post("/api/alerts", api(Permission.MANAGE_WEBHOOKS, create_alert))
    app.router.add_delete("/api/alerts/{id}", api(Permission.MANAGE_WEBHOOKS, delete_alert))


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    return {"id": endpoint.endpoint_id, "object": "webhook_endpoint", "url": endpoint.url,
            "events": list(endpoint.events), "created_at": endpoint.created_at}


def alert_json(alert: BalanceAlert, caller: Caller) -> dict[str, Any]:
    return {"id": alert.alert_id, "object": "balance_alert", "event": alert.event,
            "threshold": money(alert.threshold_nusd, caller.owners.settings), "share_percent": alert.share_percent,
            "armed": alert.armed, "created_at": alert.created_at}


def _checked_url(url: str, allow_http: bool) -> str:
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username or parts.password:
        raise Refused(invalid_request(f"url must be an {' or '.join(schemes)} URL with a host and no credentials.",
                                      "url", "invalid_url"))
    return url


async def list_webhooks(request: web.Request, caller: Caller) -> web.Response:
    found = await caller.owners.store.endpoints(caller.wallet_id)
    return web.json_response({"object": "list", "data": [endpoint_json(e) for e in found]})


async def create_webhook(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateWebhook, await json_body(request))
    state = request.app[STATE]
    url = _checked_url(body.url, state.settings.webhooks.allow_http)
    if isinstance(state.box, BoxUnavailable):
        raise Refused(ApiError(503, f"Webhook secrets are sealed with the master key, and {state.box.reason}.",
                               "server_error", "master_key_unavailable"))
    if len(await state.book.endpoints(caller.wallet_id)) >= ENDPOINTS_PER_WALLET_MAX:
        raise Refused(invalid_request(f"A wallet has at most {ENDPOINTS_PER_WALLET_MAX} webhook endpoints.", "url",
                                      "too_many_endpoints"))
    endpoint_id, secret = f"we_{secrets.token_hex(8)}", new_secret()
    sealed = state.box.seal(secret, secret_context(endpoint_id, caller.wallet_id))
    made = await state.book.create_endpoint(Endpoint(endpoint_id, caller.wallet_id, url,
                                                     tuple(dict.fromkeys(body.events)), sealed))
    return web.json_response({**endpoint_json(made), "secret": secret}, status=201)


async def _endpoint_of_wallet(caller: Caller, endpoint_id: str) -> Endpoint:
    found = await caller.owners.store.endpoint(endpoint_id)
    if found is None or found.wallet_id != caller.wallet_id or found.disabled_at is not None:
        raise Refused(not_found(f"no webhook endpoint {endpoint_id!r}"))
    return found


async def delete_webhook(request: web.Request, caller: Caller) -> web.Response:
    endpoint_id = valid(inputs.IdPath, dict(request.match_info)).id
    await _endpoint_of_wallet(caller, endpoint_id)
    await caller.owners.store.disable_endpoint(endpoint_id)
    return web.json_response({"id": endpoint_id, "object": "webhook_endpoint", "deleted": True})


async def list_deliveries(request: web.Request, caller: Caller) -> web.Response:
    endpoint_id = valid(inputs.IdPath, dict(request.match_info)).id
    query = valid(inputs.DeliveriesQuery, dict(request.query))
    await _endpoint_of_wallet(caller, endpoint_id)
    found = await caller.owners.store.attempts(endpoint_id, query.limit)
    return web.json_response({"object": "list", "data": [
        {"id": a.attempt_id, "event_id": a.event_id, "attempt": a.attempt, "outcome": a.outcome,
         "status_code": a.status_code, "error": a.error, "duration_ms": round(a.duration_ms, 3),
         "created_at": a.created_at} for a in found]})


async def list_alerts(request: web.Request, caller: Caller) -> web.Response:
    found = await caller.owners.store.alerts(caller.wallet_id)
    return web.json_response({"object": "list", "data": [alert_json(a, caller) for a in found]})


async def create_alert(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateAlert, await json_body(request))
    if (body.threshold is None) == (body.share_percent is None):
        raise Refused(invalid_request("Give either threshold (USD) or share_percent (of the last top-up).",
                                      "threshold", "invalid_value"))
    store = caller.owners.store
    if len(await store.alerts(caller.wallet_id)) >= ALERTS_PER_WALLET_MAX:
        raise Refused(invalid_request(f"A wallet has at most {ALERTS_PER_WALLET_MAX} alerts.", "threshold",
                                      "too_many_alerts"))
    threshold = parse_usd(body.threshold) if body.threshold is not None else await _share_of_last_top_up(
        caller, body.share_percent or 0)
    made = await store.create_alert(BalanceAlert(f"alert_{secrets.token_hex(8)}", caller.wallet_id,
                                                 "wallet.balance_low", threshold, body.share_percent))
    return web.json_response(alert_json(made, caller), status=201)


async def _share_of_last_top_up(caller: Caller, percent: int) -> int:
    deposits = await caller.owners.store.list_deposits(caller.wallet_id, 20, None)
    credited = [d.amount_credited_nusd for d in deposits.items if d.status.value == "completed"]
    return credited[0] * percent // 100 if credited else 0  # no top-up yet: it follows the first one


async def delete_alert(request: web.Request, caller: Caller) -> web.Response:
    alert_id = valid(inputs.IdPath, dict(request.match_info)).id
    store = caller.owners.store
    if alert_id not in {a.alert_id for a in await store.alerts(caller.wallet_id)} or not await store.delete_alert(alert_id):
        raise Refused(not_found(f"no alert {alert_id!r}"))
    return web.json_response({"id": alert_id, "object": "balance_alert", "deleted": True})
