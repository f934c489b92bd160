"""The OpenAI-compatible endpoints: authenticate, validate, hold, forward, meter, settle.

Every request that gets a hold ends in exactly one of Billing.settle or
Billing.release; the `finally` blocks below are where that is guaranteed.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
from aiohttp import web

from config.pricing import TokenUsage
from gateway import errors, tokens
from gateway.auth import authenticate
from gateway.billing import Hold, HoldState, Shortage
from gateway.calls import (
    Call,
    close_hold,
    observe,
    passthrough_error,
    prompt_tokens,
    relayed_headers,
    upstream_failure,
    upstream_headers,
    upstream_url,
    usage_record,
)
from gateway.errors import ApiError
from gateway.estimate import media_bound, output_tokens_max, tight_prompt_tokens, worst_case_nusd
from gateway.metering import completion_texts, meter, usage_from_body
from gateway.operations import REQUEST_ID_PREFIX
from gateway.state import STATE, GatewayState
from gateway.streaming import relay
from ledger.money import format_usd

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
REQUIRED_INPUT = {"chat": "messages", "completion": "prompt", "embedding": "input"}


def new_request_id() -> str:
    return f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}"


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    request_id = new_request_id()
    endpoint = ENDPOINTS[request.path]
    if state.in_flight >= state.settings.limits.requests_in_flight_max:
        return _refuse(state, endpoint, errors.service_unavailable("Too many requests in flight; retry shortly.", "overloaded"), request_id)
    state.in_flight += 1
    try:
        call = await _prepare(state, request, endpoint, request_id, started)
        if isinstance(call, ApiError):
            return _refuse(state, endpoint, call, request_id)
        hold = await _reserve(state, call)
        if isinstance(hold, ApiError):
            return _refuse(state, endpoint, hold, request_id)
        try:
            if call.stream:
                return await relay(state, request, call, hold)
            return await _forward(state, call, hold)
        finally:
            if hold.state is HoldState.OPEN:
                # Only an unexpected error gets here: never leave money held by it.
                await state.billing.release(hold)
    finally:
        state.in_flight -= 1


def _refuse(state: GatewayState, endpoint: str, error: ApiError, request_id: str) -> web.Response:
    state.metrics.refused(endpoint, error.status)
    return error.response(request_id)


async def _prepare(state: GatewayState, request: web.Request, endpoint: str, request_id: str, started: float) -> Call | ApiError:
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return key
    limit = state.settings.limits.body_bytes_max
    if request.content_length is not None and request.content_length > limit:
        return errors.body_too_large(limit)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return errors.body_too_large(limit)
    payload = _parse_json(body)
    if isinstance(payload, ApiError):
        return payload
    model_name = payload.get("model")
    if not isinstance(model_name, str) or not model_name:
        return errors.invalid_request("you must provide a model parameter", "model", "missing_required_parameter")
    route = state.routes.get(model_name)
    if route is None or route.model.kind != endpoint:
        return errors.model_not_found(model_name)
    required = REQUIRED_INPUT[endpoint]
    if payload.get(required) in (None, "", []):
        return errors.invalid_request(f"Missing required parameter: '{required}'.", required, "missing_required_parameter")
    flags = _stream_flags(payload, endpoint)
    if isinstance(flags, ApiError):
        return flags
    stream, wants_usage = flags
    return Call(request_id, endpoint, key, route, payload, body, stream, wants_usage, started)


def _stream_flags(payload: dict[str, Any], endpoint: str) -> tuple[bool, bool] | ApiError:
    """(stream, the client wants the usage chunk), validated as OpenAI validates them."""
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return errors.invalid_request("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    options = payload.get("stream_options")
    if options is None:
        return stream is True and endpoint != "embedding", False
    if stream is not True:
        return errors.invalid_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                                      "stream_options", "invalid_value")
    if not isinstance(options, dict):
        return errors.invalid_request("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        return errors.invalid_request("Invalid type for 'stream_options.include_usage': expected a boolean.",
                                      "stream_options.include_usage", "invalid_type")
    streams = endpoint != "embedding"
    return streams, streams and include_usage is True


def _parse_json(body: bytes) -> dict[str, Any] | ApiError:
    if not body:
        return errors.invalid_request("We could not parse the JSON body of your request: the body is empty.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return errors.invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)"
        )
    if not isinstance(payload, dict):
        return errors.invalid_request("The JSON body of your request must be an object.")
    return payload


async def _reserve(state: GatewayState, call: Call) -> Hold | ApiError:
    output_max = output_tokens_max(call.endpoint, call.payload, call.route.model)
    if isinstance(output_max, ApiError):
        return output_max
    # len(body) bounds the text's tokens for free; images and audio at their most
    # (gateway/estimate.py). Tokenize only if that is too coarse for the wallet.
    rates = call.route.rates
    media = media_bound(call.endpoint, call.payload, rates)
    amount = worst_case_nusd(call.route.price, len(call.body) + media.most, output_max)
    held = await _hold(state, call, amount)
    # A refusal must stay cheap: when even the least this request can cost
    # (output, per call, images at their base) is more than the wallet has,
    # refuse without tokenizing anything.
    if isinstance(held, Shortage) and worst_case_nusd(call.route.price, media.least, output_max) <= held.available_nusd:
        # At most limits.tokenize_bytes_max bytes are tokenized; off the loop all the same.
        tight = await asyncio.get_running_loop().run_in_executor(
            None, tight_prompt_tokens, call.endpoint, call.payload, call.route.encoding, rates, len(call.body),
            state.settings.limits.tokenize_bytes_max)
        tight_amount = worst_case_nusd(call.route.price, tight, output_max)
        if tight_amount < amount:
            held = await _hold(state, call, tight_amount)
    if isinstance(held, Shortage):
        return errors.insufficient_quota(format_usd(held.available_nusd), format_usd(held.needed_nusd))
    return held


async def _hold(state: GatewayState, call: Call, amount_nusd: int) -> Hold | Shortage | ApiError:
    if amount_nusd == 0:
        return Hold(call.request_id, call.key.wallet_id, 0)  # a free model needs no hold
    return await state.billing.reserve(call.key.wallet_id, call.request_id, amount_nusd)


async def _forward(state: GatewayState, call: Call, hold: Hold) -> web.StreamResponse:
    sent = time.perf_counter()
    try:
        async with state.session.post(upstream_url(call), data=call.body, headers=upstream_headers(call.route, False)) as upstream:
            raw = await upstream.read()
            status, upstream_headers_seen = upstream.status, upstream.headers
    except BaseException as exc:
        await close_hold(state, hold, None)
        return upstream_failure(state, call, exc)
    upstream_s = time.perf_counter() - sent
    if status != 200:
        await close_hold(state, hold, None)
        return passthrough_error(state, call, status, raw, upstream_headers_seen)
    data = _loads_or_none(raw)
    reported = usage_from_body(data.get("usage")) if data else None
    counted = None
    if reported is None:
        # No usage from the upstream: count it ourselves, off the event loop.
        counted = await asyncio.get_running_loop().run_in_executor(None, _count_usage, call, data)
    metered = meter(call.route.price, reported, counted, state.settings.limits.usage_tokens_max)
    served = data.get("model") if data else None
    served_model = served if isinstance(served, str) else call.route.model_name
    headers = {**relayed_headers(upstream_headers_seen),
               "Content-Type": upstream_headers_seen.get("Content-Type", "application/json"),
               "X-Request-Id": call.request_id, "X-Model": served_model, "X-Total-Tokens": str(metered.usage.total_tokens)}
    record = usage_record(call, hold, metered, "ok", upstream_s)
    result = await close_hold(state, hold, record)
    if result is not None:
        headers["X-Usage-Cost"] = format_usd(metered.cost_nusd)
        if result.shortfall_nusd:
            headers["X-Usage-Shortfall"] = format_usd(result.shortfall_nusd)
    observe(state, call, "ok", metered, upstream_s)
    return web.Response(status=200, body=raw, headers=headers)


def _loads_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _count_usage(call: Call, data: dict[str, Any] | None) -> TokenUsage:
    return TokenUsage(prompt_tokens(call), _completion_tokens_of_body(call, data))


def _completion_tokens_of_body(call: Call, data: dict[str, Any] | None) -> int:
    """The completion's tokens when the upstream reported none: text, refusals and tool calls alike."""
    if not data or call.endpoint == "embedding":
        return 0
    return sum(tokens.count_text(text, call.route.encoding.name) for text in completion_texts(data.get("choices"), "message"))
