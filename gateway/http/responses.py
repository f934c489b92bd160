"""From values to responses: errors in the client's protocol shape, refusals to statuses.

The money service answers with domain values (gateway/money/billing.py's
Refused); this is where each becomes the error a client sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.dialects import openai
from gateway.errors import ApiError
from gateway.metering.metering import Metered
from gateway.metrics import Metrics
from gateway.money.billing import Refusal, Refused
from gateway.money.calls import Call
from gateway.money.caps import cap_name
from gateway.upstream import UpstreamFailed
from ledger.money import format_usd
from ledger.times import utc_text

log = logging.getLogger("meterway.calls")

_UNAVAILABLE = {
    Refusal.SETTLEMENT_BACKLOG: "Too many settlements are waiting for the ledger; nothing was charged. Retry shortly.",
    Refusal.HOLDS_UNAVAILABLE: "The hold store is unavailable; nothing was charged. Retry shortly.",
    Refusal.LEDGER_UNAVAILABLE: "The ledger is unavailable; nothing was charged. Retry shortly.",
}


def error_response(error: ApiError, request_id: str | None = None) -> web.Response:
    headers = dict(error.headers)
    if request_id:
        headers["X-Request-Id"] = request_id
    return web.Response(status=error.status, body=openai.error_body(error), content_type="application/json",
                        headers=headers)


def refusal_error(refused: Refused) -> ApiError:
    if refused.reason is Refusal.INSUFFICIENT_FUNDS:
        return errors.insufficient_quota(format_usd(refused.available_nusd), format_usd(refused.needed_nusd))
    if refused.reason is Refusal.BUDGET_EXCEEDED:
        assert refused.cap is not None, refused
        cap = refused.cap
        return errors.budget_exceeded(cap_name(cap), cap.window.value, None if cap.until is None else utc_text(cap.until),
                                      format_usd(refused.available_nusd), format_usd(refused.needed_nusd))
    return errors.service_unavailable(_UNAVAILABLE[refused.reason], refused.reason.value)


def upstream_failed(metrics: Metrics, call: Call, failed: UpstreamFailed) -> web.Response:
    error = errors.upstream_timeout() if failed.status == 504 else errors.upstream_unreachable()
    # An operator's first lead on a 502/504: which request, model and provider,
    # and why. Never the key or the body (the error's class and text only).
    log.warning("upstream %d for request %s: model %s, provider %s: %s", error.status, call.request_id,
                call.route.model_name, call.route.provider_name, failed.detail)
    observe(metrics, call, f"upstream_{error.status}", None, 0.0)
    return error_response(error, call.request_id)


def passthrough_error(metrics: Metrics, call: Call, status: int, raw: bytes, upstream: Mapping[str, str]) -> web.Response:
    """The provider's own error answer, relayed as it came (nothing was charged)."""
    observe(metrics, call, f"upstream_{status}", None, 0.0)
    headers = {**openai.relayed_headers(upstream), "Content-Type": upstream.get("Content-Type", "application/json"),
               "X-Request-Id": call.request_id}
    return web.Response(status=status, body=raw, headers=headers)


def observe(metrics: Metrics, call: Call, outcome: str, metered: Metered | None, upstream_s: float,
            charged_nusd: int | None = None) -> None:
    """charged_nusd: what the wallet was charged, when not the metered cost (a BYOK call's fee)."""
    metrics.record(call.endpoint, outcome, max(time.perf_counter() - call.started - upstream_s, 0.0))
    if metered is not None:
        usage = metered.usage
        metrics.record_usage(call.route.model_name, usage.prompt_tokens - usage.cached_tokens, usage.cached_tokens,
                             usage.completion_tokens, metered.cost_nusd if charged_nusd is None else charged_nusd)


def byok_headers(call: Call, provider_cost_nusd: int) -> dict[str, str]:
    """A BYOK answer's own headers: what the provider's price list says it cost, and whose key it went with.

    X-Usage-Cost stays what the wallet was charged (the fee, or 0).
    """
    assert call.byok is not None, call
    return {"X-Provider-Cost": format_usd(provider_cost_nusd), "X-Meterway-Byok": call.byok.source}


# Set on a request by a handler that starts its response early (a stream):
# after that an error can only close the connection, not answer. Set where
# the stream starts, not by an on_response_prepare signal, which would cost
# every request a coroutine call. (web.RequestKey exists from aiohttp 3.13 on.)
RESPONSE_STARTED: Any = (web.RequestKey("mw_response_started", bool) if hasattr(web, "RequestKey")
                         else "mw_response_started")


def mark_response_started(request: web.Request) -> None:
    request[RESPONSE_STARTED] = True


def response_started(request: web.Request) -> bool:
    return bool(request.get(RESPONSE_STARTED))
