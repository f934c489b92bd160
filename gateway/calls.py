"""What the endpoints share: a validated call, where it goes, and how it ends.

Every hold ends in close_hold(): settle when there is a usage record,
release when there is none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from gateway import errors
from gateway.billing import Hold
from gateway.metering import Metered, count_prompt
from gateway.settlement import SettlementUnavailable
from gateway.state import GatewayState, Route
from ledger.book import ApiKeyRecord, SettleResult, UsageRecord

log = logging.getLogger("meterway.calls")

UPSTREAM_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}

# Upstream headers a client's SDK reads (the OpenAI SDK's retry logic reads
# retry-after, retry-after-ms and x-should-retry; dashboards read the rate
# limits), relayed as they are. Named one by one: a lookup each is cheaper on
# the hot path than scanning every upstream header. The upstream's x-request-id
# is relayed as X-Upstream-Request-Id: X-Request-Id names our own request
# (GET /v1/usage/{id}).
RELAYED_HEADERS = (
    "retry-after", "retry-after-ms", "x-should-retry", "openai-processing-ms",
    *(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")),
)
UPSTREAM_REQUEST_ID = "x-request-id"


@dataclass(frozen=True)
class Call:
    """A request that passed every check and may be forwarded."""

    request_id: str
    endpoint: str
    key: ApiKeyRecord
    route: Route
    payload: dict[str, Any]
    body: bytes
    stream: bool
    client_wants_usage: bool
    started: float


def upstream_headers(route: Route, stream: bool) -> dict[str, str]:
    return route.headers_stream if stream else route.headers_json


def upstream_url(call: Call) -> str:
    return call.route.provider.base_url + UPSTREAM_PATHS[call.endpoint]


async def close_hold(state: GatewayState, hold: Hold, record: UsageRecord | None) -> SettleResult | None:
    """Settle (record given) or release (None): the one exit of every hold.

    Returns None when nothing was committed; then the caller must not show a cost.
    A free call (hold and cost of 0) is settled too: every served call has a
    usage row, and shows a cost of 0.
    """
    if record is None:
        await state.billing.release(hold)
        return None
    try:
        return await state.billing.settle(hold, record)
    except SettlementUnavailable:
        return None


def usage_record(call: Call, hold: Hold, metered: Metered, status: str, upstream_s: float) -> UsageRecord:
    usage, price = metered.usage, call.route.price
    if metered.capped_from is not None:
        given = metered.capped_from
        # Loud on purpose: a provider bug or an attack; the row is flagged by its usage_source.
        log.error("request %s: %s reported absurd usage (prompt_tokens=%d, cached_tokens=%d, completion_tokens=%d); "
                  "recorded as %s with prompt_tokens=%d, completion_tokens=%d, cost %d nUSD (the wallet pays what it "
                  "can, the rest is a shortfall)", call.request_id, call.route.model_name, given.prompt_tokens,
                  given.cached_tokens, given.completion_tokens, metered.source, usage.prompt_tokens,
                  usage.completion_tokens, metered.cost_nusd)
    return UsageRecord(
        request_id=call.request_id, key_id=call.key.key_id, wallet_id=call.key.wallet_id, bot=call.key.bot,
        model=call.route.model_name, upstream=call.route.provider_name, endpoint=call.endpoint, status=status,
        usage_source=metered.source, prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens, input_per_1m_nusd=price.input_per_1m_nusd,
        cached_input_per_1m_nusd=price.cached_input_per_1m_nusd, output_per_1m_nusd=price.output_per_1m_nusd,
        per_call_nusd=price.per_call_nusd, cost_nusd=metered.cost_nusd, held_nusd=hold.amount_nusd,
        latency_ms=(time.perf_counter() - call.started) * 1000, upstream_latency_ms=upstream_s * 1000,
    )


def observe(state: GatewayState, call: Call, outcome: str, metered: Metered | None, upstream_s: float) -> None:
    state.metrics.record(call.endpoint, outcome, max(time.perf_counter() - call.started - upstream_s, 0.0))
    if metered is not None:
        usage = metered.usage
        state.metrics.record_usage(call.route.model_name, usage.prompt_tokens - usage.cached_tokens,
                                   usage.cached_tokens, usage.completion_tokens, metered.cost_nusd)


def relayed_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    relayed = {name: value for name in RELAYED_HEADERS if (value := upstream.get(name)) is not None}
    upstream_id = upstream.get(UPSTREAM_REQUEST_ID)
    if upstream_id is not None:
        relayed["X-Upstream-Request-Id"] = upstream_id
    return relayed


def upstream_failure(state: GatewayState, call: Call, exc: BaseException) -> web.Response:
    if isinstance(exc, asyncio.TimeoutError):
        error = errors.upstream_timeout()
    elif isinstance(exc, aiohttp.ClientError):
        error = errors.upstream_unreachable()
    else:
        raise exc
    # An operator's first lead on a 502/504: which request, model and provider,
    # and why. Never the key or the body (the error's class and text only).
    log.warning("upstream %d for request %s: model %s, provider %s: %s: %s", error.status, call.request_id,
                call.route.model_name, call.route.provider_name, type(exc).__name__, exc)
    observe(state, call, f"upstream_{error.status}", None, 0.0)
    return error.response(call.request_id)


def passthrough_error(state: GatewayState, call: Call, status: int, raw: bytes, upstream: Mapping[str, str]) -> web.Response:
    observe(state, call, f"upstream_{status}", None, 0.0)
    headers = {**relayed_headers(upstream), "Content-Type": upstream.get("Content-Type", "application/json"),
               "X-Request-Id": call.request_id}
    return web.Response(status=status, body=raw, headers=headers)


def prompt_tokens(call: Call) -> int:
    return count_prompt(call.endpoint, call.payload, call.route.encoding, call.route.rates)
