"""Relaying a server-sent-event stream chunk by chunk, metering as it goes.

Each upstream event is written to the client as soon as it is complete; none
is buffered beyond that. The usage event that we asked the upstream for
(stream_options.include_usage) is held back: the request is settled first, and
then the client sees it with `usage.cost` added, or does not see it at all if
it did not ask. If the stream is cut (the client leaves, the upstream dies),
the request is charged for the prompt plus the completion text relayed.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from config.pricing import TokenUsage
from gateway import errors, tokens
from gateway.billing import Hold
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
from gateway.metering import completion_texts, meter, usage_from_body
from gateway.state import GatewayState
from ledger.money import format_usd

DONE_EVENT = b"data: [DONE]\n\n"
# Comment events held back, at most, while waiting for the first chunk.
EARLY_EVENTS_MAX = 16


class EventKind(enum.Enum):
    FORWARD = "forward"  # an ordinary chunk: relay it now
    USAGE = "usage"  # the usage-only chunk: hold it until settled
    DONE = "done"  # data: [DONE]: the upstream finished cleanly


class ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


class UpstreamBroken(Exception):
    """The upstream stream ended in the middle or sent something unusable."""


class StreamTracker:
    """Reads each event once: what kind it is, the usage if any, the text relayed."""

    def __init__(self) -> None:
        self.usage_event: dict[str, Any] | None = None
        self.reported: TokenUsage | None = None
        self.served_model: str | None = None
        self.done = False
        self._pending_text: list[str] = []
        self.relayed_text: list[str] = []

    def observe(self, event: bytes) -> EventKind:
        data = _data_of(event)
        if data is None:
            return EventKind.FORWARD
        if data == b"[DONE]":
            self.done = True
            return EventKind.DONE
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return EventKind.FORWARD
        if not isinstance(chunk, dict):
            return EventKind.FORWARD
        if self.served_model is None and isinstance(chunk.get("model"), str):
            self.served_model = chunk["model"]
        usage = usage_from_body(chunk.get("usage"))
        if usage is not None:
            self.reported = usage
        choices = chunk.get("choices")
        if usage is not None and not choices:
            self.usage_event = chunk
            return EventKind.USAGE
        self._pending_text = completion_texts(choices, "delta")
        return EventKind.FORWARD

    def relayed(self) -> None:
        """The last FORWARD event reached the client: its text now counts as consumed."""
        self.relayed_text.extend(self._pending_text)
        self._pending_text = []


def _data_of(event: bytes) -> bytes | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            return line[5:].strip()
    return None


async def sse_events(content: aiohttp.StreamReader, event_bytes_max: int) -> AsyncIterator[bytes]:
    buffer = b""
    try:
        async for chunk in content.iter_any():
            buffer += chunk
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            while (end := buffer.find(b"\n\n")) != -1:
                yield buffer[: end + 2]
                buffer = buffer[end + 2 :]
            if len(buffer) > event_bytes_max:
                raise UpstreamBroken(f"an upstream event exceeds {event_bytes_max} bytes")
    except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
        raise UpstreamBroken(str(exc)) from exc


def _with_usage_requested(call: Call) -> bytes:
    if call.client_wants_usage:
        return call.body
    options = call.payload.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return orjson.dumps({**call.payload, "stream_options": options})


async def relay(state: GatewayState, request: web.Request, call: Call, hold: Hold) -> web.StreamResponse:
    sent = time.perf_counter()
    try:
        upstream = await state.session.post(
            upstream_url(call), data=_with_usage_requested(call), headers=upstream_headers(call.route, True)
        )
    except BaseException as exc:
        await close_hold(state, hold, None)
        return upstream_failure(state, call, exc)
    try:
        if upstream.status != 200:
            raw = await _read_error_body(upstream)
            await close_hold(state, hold, None)
            return passthrough_error(state, call, upstream.status, raw, upstream.headers)
        return await _relay_events(state, request, call, hold, upstream, sent)
    finally:
        upstream.close()


async def _read_error_body(upstream: aiohttp.ClientResponse) -> bytes:
    try:
        return await upstream.read()
    except (TimeoutError, aiohttp.ClientError):
        return b'{"error": {"message": "upstream error", "type": "server_error", "param": null, "code": null}}'


async def _relay_events(
    state: GatewayState, request: web.Request, call: Call, hold: Hold, upstream: aiohttp.ClientResponse, sent: float
) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers={
        **relayed_headers(upstream.headers), "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Request-Id": call.request_id,
    })
    tracker = StreamTracker()
    status = "ok"
    early: list[bytes] = []  # comments (keep-alives) that came before the first chunk
    try:
        async for event in sse_events(upstream.content, state.settings.limits.stream_event_bytes_max):
            if tracker.observe(event) is not EventKind.FORWARD:
                continue
            if not response.prepared:
                # The headers wait for the first chunk, which names the model
                # that served (X-Model); a client gets no byte before it anyway.
                if _data_of(event) is None and len(early) < EARLY_EVENTS_MAX:
                    early.append(event)
                    continue
                await _start(response, request, call, tracker, early)
            await _write(response, event)
            tracker.relayed()
        if not tracker.done and tracker.reported is None:
            status = "upstream_dropped"
    except UpstreamBroken:
        status = "upstream_dropped"
    except ClientGone:
        status = "client_closed"
    finally:
        # Runs on cancellation too: whatever was consumed is settled, exactly once.
        upstream_s = time.perf_counter() - sent
        # Shielded as a unit: a second cancellation (shutdown) cannot cut it in half.
        cost_usd = await asyncio.shield(_settle_stream(state, call, hold, tracker, status, upstream_s))
    if status == "client_closed":
        return response
    try:
        if not response.prepared:
            await _start(response, request, call, tracker, early)
        await _finish(response, call, tracker, cost_usd, status)
    except ClientGone:
        pass
    return response


async def _start(response: web.StreamResponse, request: web.Request, call: Call, tracker: StreamTracker,
                 early: list[bytes]) -> None:
    response.headers["X-Model"] = tracker.served_model or call.route.model_name
    await _prepare(response, request)
    for event in early:
        await _write(response, event)
    early.clear()


async def _settle_stream(state: GatewayState, call: Call, hold: Hold, tracker: StreamTracker, status: str, upstream_s: float) -> str | None:
    counted = None
    if tracker.reported is None:
        # Cut short or no usage sent: count ourselves, off the event loop.
        counted = await asyncio.get_running_loop().run_in_executor(None, _count_usage, call, "".join(tracker.relayed_text))
        status = "partial" if status == "ok" else status
    metered = meter(call.route.price, tracker.reported, counted, state.settings.limits.usage_tokens_max)
    record = usage_record(call, hold, metered, status, upstream_s)
    result = await close_hold(state, hold, record)
    observe(state, call, status, metered, upstream_s)
    return None if result is None else format_usd(metered.cost_nusd)


def _count_usage(call: Call, completion_text: str) -> TokenUsage:
    return TokenUsage(prompt_tokens(call), tokens.count_text(completion_text, call.route.encoding.name))


async def _finish(response: web.StreamResponse, call: Call, tracker: StreamTracker, cost_usd: str | None, status: str) -> None:
    if status == "upstream_dropped":
        error = {"error": {"message": "The upstream stream ended early; you were charged only for what was relayed.",
                           "type": "server_error", "param": None, "code": "upstream_stream_interrupted"}}
        await _write(response, b"data: " + orjson.dumps(error) + b"\n\n")
    elif call.client_wants_usage and tracker.usage_event is not None:
        event = tracker.usage_event
        await _write(response, b"data: " + _usage_event_with_cost(event, cost_usd) + b"\n\n")
    if tracker.done:
        await _write(response, DONE_EVENT)
    try:
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone() from exc


COST_PLACEHOLDER = "__meterway_cost__"


def _usage_event_with_cost(event: dict[str, Any], cost_usd: str | None) -> bytes:
    """The usage chunk with usage.cost in USD, as OpenRouter reports it.

    The cost is written as an exact decimal literal, never through a float.
    """
    if cost_usd is None:
        return orjson.dumps(event)
    usage = {**event["usage"], "cost": COST_PLACEHOLDER}
    encoded = orjson.dumps({**event, "usage": usage})
    return encoded.replace(f'"{COST_PLACEHOLDER}"'.encode(), cost_usd.encode(), 1)


async def _prepare(response: web.StreamResponse, request: web.Request) -> None:
    errors.mark_response_started(request)
    try:
        await response.prepare(request)
    except (ConnectionError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone() from exc


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionError, aiohttp.ClientConnectionError, RuntimeError) as exc:
        raise ClientGone() from exc
