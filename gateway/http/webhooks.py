"""POST /webhooks/stripe: Stripe's events, verified by the stripe library, applied once.

The answers are Stripe's contract: 2xx means "delivered, do not send again";
anything else makes Stripe retry (for up to three days). So a bad signature or
a stale timestamp is a 400 and changes nothing, and a verified event that fails
in our handler (the ledger down, a bug) is a 500, so that Stripe retries it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.errors import ApiError
from gateway.http.responses import error_response
from gateway.http.state import STATE
from payments.stripe_api import SignatureInvalid

log = logging.getLogger("meterway.webhooks")


def add_routes(app: web.Application) -> None:
    app.router.add_post("/webhooks/stripe", stripe_webhook)


async def stripe_webhook(request: web.Request) -> web.Response:
    state = request.app[STATE]
    payments = state.payments
    if payments is None:
        return error_response(ApiError(404, "Card payments are not enabled on this gateway.", "invalid_request_error",
                                       "payments_disabled"))
    limit = state.settings.stripe.webhook_bytes_max
    if request.content_length is not None and request.content_length > limit:
        return error_response(ApiError(413, f"A webhook body is at most {limit} bytes.", "invalid_request_error",
                                       "body_too_large"))
    payload = await request.read()
    try:
        event = payments.api.verify(payload, request.headers.get("Stripe-Signature"))
    except SignatureInvalid as exc:
        log.warning("stripe webhook refused: %s", exc)
        return error_response(ApiError(400, f"The webhook's signature does not verify: {exc}", "invalid_request_error",
                                       "invalid_signature"))
    try:
        handled = await payments.apply(event.to_dict())
    except Exception:
        # Verified, so Stripe's: it must come again. Every effect is idempotent, so a retry is safe.
        log.exception("stripe event %s (%s) failed; answering 500 so that Stripe retries it", event.id, event.type)
        return error_response(ApiError(500, "The event could not be applied; it will be retried.", "server_error",
                                       "webhook_failed"))
    return web.json_response({"received": True, "id": handled.event_id, "action": handled.action})
