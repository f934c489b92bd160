"""The Stripe front: Checkout Sessions and disputes here, everything else proxied to localstripe.

localstripe (a stateful fake Stripe server) covers customers, payment methods,
PaymentIntents, charges and refunds, and signs its own webhooks; it has no
Checkout Sessions and no disputes. The stripe library is pointed at this front
(one base URL), which serves those itself and forwards every other /v1 call.

Test controls under /_fake/ play the buyer and the card network: pay a session
(really paying through localstripe, so a charge exists and a saved card can be
charged again off-session), settle an async payment, expire a session, refund,
dispute, and re-deliver any event, so a test can send duplicates and any order.
Events are signed as Stripe signs them and POSTed to every registered endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from fakes.stripe import objects
from fakes.stripe.forms import decode

DELIVERY_TIMEOUT_S = 5.0
DELIVERY_ATTEMPTS_MAX = 3  # Stripe retries for days; a test needs a few tries at most
DELIVERY_RETRY_DELAY_S = 0.2
TEST_CARD = "4242424242424242"


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header for a payload: t=<unix>,v1=<HMAC-SHA256 of "t.payload">."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


@dataclass
class Delivery:
    url: str
    status: int  # 0: no answer


@dataclass
class FrontState:
    localstripe: str
    base_url: str = ""
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    deliveries: dict[str, list[Delivery]] = field(default_factory=dict)
    endpoints: list[tuple[str, str]] = field(default_factory=list)  # (url, secret)
    idempotent: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)  # charge id -> cents refunded so far


STATE = web.AppKey("fake_stripe", FrontState)
HTTP = web.AppKey("fake_stripe_http", aiohttp.ClientSession)


def create_app(localstripe_url: str) -> web.Application:
    app = web.Application()
    app[STATE] = FrontState(localstripe_url.rstrip("/"))
    app.cleanup_ctx.append(_http_session)
    app.router.add_post("/v1/checkout/sessions", create_session)
    app.router.add_get("/v1/checkout/sessions/{id}", get_session)
    app.router.add_post("/v1/checkout/sessions/{id}/expire", expire_session)
    app.router.add_post("/_fake/webhooks", register_webhook)
    app.router.add_post("/_fake/checkout/sessions/{id}/pay", pay_session)
    app.router.add_post("/_fake/checkout/sessions/{id}/async", settle_async)
    app.router.add_post("/_fake/checkout/sessions/{id}/expire", expire_session)
    app.router.add_post("/_fake/refunds", refund)
    app.router.add_post("/_fake/disputes", dispute)
    app.router.add_get("/_fake/events", list_events)
    app.router.add_post("/_fake/events/{id}/resend", resend)
    app.router.add_route("*", "/v1/{tail:.*}", proxy)
    return app


async def _http_session(app: web.Application) -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S)) as session:
        app[HTTP] = session
        yield


def stripe_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message, "param": param, "code": code}}, status=status)


# --- the Checkout Session API -------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await request.text()
    key = request.headers.get("Idempotency-Key")
    if key is not None and key in state.idempotent:
        stored_body, stored = state.idempotent[key]
        if stored_body != body:
            return stripe_error(400, "Keys for idempotent requests can only be used with the same parameters they "
                                "were first used with.", code="idempotency_key_in_use", kind="idempotency_error")
        return web.json_response(objects.public(stored))
    params = decode(body)
    problem = _check_session_params(params)
    if problem is not None:
        return stripe_error(400, f"Missing required param: {problem}." if problem != "amount" else
                            "unit_amount must be a positive integer.", problem, "parameter_missing")
    session = objects.checkout_session(params, state.base_url or str(request.url.origin()))
    state.sessions[session["id"]] = session
    if key is not None:
        state.idempotent[key] = (body, session)
    return web.json_response(objects.public(session))


def _check_session_params(params: dict[str, Any]) -> str | None:
    for name in ("mode", "success_url", "line_items"):
        if not params.get(name):
            return name
    try:
        if int(params["line_items"][0]["price_data"]["unit_amount"]) <= 0:
            return "amount"
    except (KeyError, IndexError, TypeError, ValueError):
        return "line_items[0][price_data][unit_amount]"
    return None


async def get_session(request: web.Request) -> web.Response:
    session = request.app[STATE].sessions.get(request.match_info["id"])
    if session is None:
        return stripe_error(404, f"No such checkout.session: '{request.match_info['id']}'", "session", "resource_missing")
    return web.json_response(objects.public(session))


async def expire_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.sessions.get(request.match_info["id"])
    if session is None:
        return stripe_error(404, "No such checkout.session", "session", "resource_missing")
    if session["status"] != "open":
        return stripe_error(400, f"Only open sessions can be expired; this one is {session['status']}.")
    session["status"] = "expired"
    await emit(request.app, "checkout.session.expired", session)
    return web.json_response(objects.public(session))


# --- the buyer and the card network -----------------------------------------------


async def pay_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.sessions.get(request.match_info["id"])
    if session is None or session["status"] != "open":
        return stripe_error(400, "The session is not open.")
    body = await _json(request)
    outcome = body.get("outcome", "paid")
    if outcome == "async_pending":
        session.update(status="complete", payment_status="unpaid")
        await emit(request.app, "checkout.session.completed", session)
        return web.json_response(objects.public(session))
    await _pay(request.app, session, str(body.get("card", TEST_CARD)))
    session.update(status="complete", payment_status="paid")
    await emit(request.app, "checkout.session.completed", session)
    return web.json_response(objects.public(session))


async def settle_async(request: web.Request) -> web.Response:
    session = request.app[STATE].sessions.get(request.match_info["id"])
    if session is None or session["status"] != "complete" or session["payment_status"] != "unpaid":
        return stripe_error(400, "The session has no pending asynchronous payment.")
    if (await _json(request)).get("succeeded", True):
        await _pay(request.app, session, TEST_CARD)
        session["payment_status"] = "paid"
        await emit(request.app, "checkout.session.async_payment_succeeded", session)
    else:
        await emit(request.app, "checkout.session.async_payment_failed", session)
    return web.json_response(objects.public(session))


async def _pay(app: web.Application, session: dict[str, Any], card: str) -> None:
    """Pay through localstripe: a customer when the card is to be kept, the card, a confirmed PaymentIntent."""
    intent_data = session.get("_payment_intent_data") or {}
    keep_card = intent_data.get("setup_future_usage") is not None
    customer = session.get("customer")
    if customer is None and (keep_card or session.get("customer_creation") == "always"):
        customer = (await _local(app, "POST", "/v1/customers", {"description": f"buyer of {session['id']}"}))["id"]
    method = (await _local(app, "POST", "/v1/payment_methods", {
        "type": "card", "card[number]": card, "card[exp_month]": "12", "card[exp_year]": "2034", "card[cvc]": "123"}))
    if customer is not None:
        await _local(app, "POST", f"/v1/payment_methods/{method['id']}/attach", {"customer": customer})
    params = {"amount": str(session["amount_total"]), "currency": session["currency"], "payment_method": method["id"],
              "confirm": "true", **{f"metadata[{k}]": v for k, v in (intent_data.get("metadata") or {}).items()}}
    if customer is not None:
        params["customer"] = customer
    intent = await _local(app, "POST", "/v1/payment_intents", params)
    session.update(customer=customer, payment_intent=intent["id"])


async def refund(request: web.Request) -> web.Response:
    """A refund made in localstripe, then charge.refunded (which localstripe does not send) from here."""
    body = await _json(request)
    intent = await _local(request.app, "GET", f"/v1/payment_intents/{body['payment_intent']}", None)
    charge_id = _as_stripe_sends(intent)["latest_charge"]
    params = {"payment_intent": body["payment_intent"]}
    if body.get("amount") is not None:
        params["amount"] = str(body["amount"])
    made = await _local(request.app, "POST", "/v1/refunds", params)
    found = await _local(request.app, "GET", f"/v1/charges/{charge_id}", None)
    state = request.app[STATE]
    state.refunded[charge_id] = state.refunded.get(charge_id, 0) + int(made["amount"])
    charge = objects.charge(found, state.refunded[charge_id])
    charge["payment_intent"] = body["payment_intent"]
    event = await emit(request.app, "charge.refunded", charge)
    return web.json_response({"refund": made, "event": event["id"]})


async def dispute(request: web.Request) -> web.Response:
    body = await _json(request)
    found = await _local(request.app, "GET", f"/v1/charges/{body['charge']}", None)
    made = objects.dispute(found, int(body.get("amount") or found["amount"]))
    event = await emit(request.app, "charge.dispute.created", made)
    return web.json_response({"dispute": made, "event": event["id"]})


# --- webhooks -----------------------------------------------------------------------


async def register_webhook(request: web.Request) -> web.Response:
    body = await _json(request)
    state = request.app[STATE]
    state.endpoints.append((body["url"], body["secret"]))
    # localstripe's own events (payment_intent.succeeded, ...) go to the same endpoint, signed alike.
    await _local(request.app, "POST", f"/_config/webhooks/wh{len(state.endpoints)}",
                 {"url": body["url"], "secret": body["secret"]})
    return web.json_response({"registered": body["url"]})


async def emit(app: web.Application, event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    event = objects.event(event_type, obj)
    app[STATE].events.append(event)
    await deliver(app, event)
    return event


async def deliver(app: web.Application, event: dict[str, Any]) -> None:
    state = app[STATE]
    payload = json.dumps(event).encode()
    for url, secret in state.endpoints:
        status = 0
        for attempt in range(DELIVERY_ATTEMPTS_MAX):
            try:
                async with app[HTTP].post(url, data=payload, headers={
                        "Content-Type": "application/json", "Stripe-Signature": sign(payload, secret)}) as answer:
                    status = answer.status
            except (TimeoutError, aiohttp.ClientError):
                status = 0
            if 200 <= status < 300:
                break
            await asyncio.sleep(DELIVERY_RETRY_DELAY_S * (attempt + 1))
        state.deliveries.setdefault(event["id"], []).append(Delivery(url, status))


async def list_events(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"data": [
        {**e, "_deliveries": [d.status for d in state.deliveries.get(e["id"], [])]} for e in state.events]})


async def resend(request: web.Request) -> web.Response:
    state = request.app[STATE]
    event = next((e for e in state.events if e["id"] == request.match_info["id"]), None)
    if event is None:
        return stripe_error(404, "No such event", "id", "resource_missing")
    times = int((await _json(request)).get("times", 1))
    for _ in range(min(times, 20)):
        await deliver(request.app, event)
    return web.json_response({"resent": times})


# --- localstripe --------------------------------------------------------------------


async def proxy(request: web.Request) -> web.Response:
    state = request.app[STATE]
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    async with request.app[HTTP].request(request.method, f"{state.localstripe}{request.path_qs}", headers=headers,
                                         data=await request.read()) as answer:
        body = await answer.read()
    if request.path.startswith("/v1/payment_intents") and answer.status < 400:
        body = json.dumps(_as_stripe_sends(json.loads(body))).encode()
    return web.Response(status=answer.status, body=body, content_type=answer.content_type or "application/json")


def _as_stripe_sends(intent: dict[str, Any]) -> dict[str, Any]:
    """localstripe expands latest_charge; Stripe sends its id unless asked to expand it."""
    latest = intent.get("latest_charge")
    if isinstance(latest, dict):
        intent["latest_charge"] = latest["id"]
    return intent


async def _local(app: web.Application, method: str, path: str, form: dict[str, str] | None) -> dict[str, Any]:
    url = f"{app[STATE].localstripe}{path}"
    async with app[HTTP].request(method, url, data=form, headers={"Authorization": "Bearer sk_test_fake"}) as answer:
        found: dict[str, Any] = await answer.json(content_type=None)
        if answer.status >= 400 and not path.startswith("/v1/payment_intents"):
            raise web.HTTPBadRequest(text=json.dumps(found), content_type="application/json")
        return found


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    found = json.loads(raw) if raw else {}
    return found if isinstance(found, dict) else {}
