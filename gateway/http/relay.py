"""Relaying a server-sent-event stream chunk by chunk, metering as it goes.

Each upstream event is written to the client as soon as it is complete; none
is buffered beyond that. The usage event that we asked the upstream for
(stream_options.include_usage) is held back: the request is charged first, and
then the client sees it with `usage.cost` added, or does not see it at all if
it did not ask. If the stream is cut (the client leaves, the upstream dies),
the request is charged for the prompt plus the completion text relayed.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from config.settings import Limits
from gateway.dialects import openai, sse
from gateway.dialects.openai import EventKind, StreamTracker
from gateway.http.responses import mark_response_started, observe, passthrough_error, upstream_failed
from gateway.metering.metering import meter
from gateway.metrics import Metrics
from gateway.money.billing import Hold
from gateway.money.calls import Call, usage_record
from gateway.upstream import Stream, Upstream, UpstreamBroken, UpstreamFailed
from ledger.book import SettleResult
from ledger.money import format_usd

# Comment events held back, at most, while waiting for the first chunk.
EARLY_EVENTS_MAX = 16


class ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


class Relay:
    def __init__(self, upstream: Upstream, metrics: Metrics, limits: Limits) -> None:
        self._upstream = upstream
        self._metrics = metrics
        self._limits = limits

    async def relay(self, request: web.Request, call: Call, hold: Hold) -> web.StreamResponse:
        sent = time.perf_counter()
        body = openai.body_for_stream(call.request, call.body)
        headers_out = call.route.headers_stream if call.byok is None else call.byok.headers_stream
        stream = await self._upstream.stream(call.route.url, body, headers_out)
        if isinstance(stream, UpstreamFailed):
            await hold.release()
            return upstream_failed(self._metrics, call, stream)
        try:
            if stream.status != 200:
                raw = await stream.read_all()
                await hold.release()
                return passthrough_error(self._metrics, call, stream.status, raw, stream.headers)
            return await self._relay_events(request, call, hold, stream, sent)
        finally:
            stream.close()

    async def _relay_events(self, request: web.Request, call: Call, hold: Hold, stream: Stream,
                            sent: float) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={
            **openai.relayed_headers(stream.headers), "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Request-Id": call.request_id,
        })
        if call.byok is not None:
            response.headers["X-Meterway-Byok"] = call.byok.source  # the costs come in the usage chunk
        tracker = StreamTracker()
        status = "ok"
        early: list[bytes] = []  # comments (keep-alives) that came before the first chunk
        try:
            async for event in sse.events(stream.chunks(), self._limits.stream_event_bytes_max):
                if tracker.observe(event) is not EventKind.FORWARD:
                    continue
                if not response.prepared:
                    # The headers wait for the first chunk, which names the model
                    # that served (X-Model); a client gets no byte before it anyway.
                    if sse.data_of(event) is None and len(early) < EARLY_EVENTS_MAX:
                        early.append(event)
                        continue
                    await _start(response, request, call, tracker, early)
                await _write(response, event)
                tracker.relayed()
            if not tracker.finished:
                status = "upstream_dropped"
        except UpstreamBroken:
            status = "upstream_dropped"
        except ClientGone:
            status = "client_closed"
        finally:
            # Runs on cancellation too: whatever was consumed is charged, exactly once.
            upstream_s = time.perf_counter() - sent
            # Shielded as a unit: a second cancellation (shutdown) cannot cut it in half.
            cost_usd, provider_cost_usd = await asyncio.shield(self._charge(call, hold, tracker, status, upstream_s))
        if status == "client_closed":
            return response
        try:
            if not response.prepared:
                await _start(response, request, call, tracker, early)
            end = openai.stream_end(tracker, call.request.client_wants_usage, cost_usd, status == "upstream_dropped",
                                    provider_cost_usd)
            if end:
                await _write(response, end)
            await _write_eof(response)
        except ClientGone:
            pass
        return response

    async def _charge(self, call: Call, hold: Hold, tracker: StreamTracker, status: str,
                      upstream_s: float) -> tuple[str | None, str | None]:
        """Charge what the stream consumed: the cost to show (None if it is not committed yet), and a
        BYOK call's provider cost (None for a plain call)."""
        counted = None
        if tracker.reported is None:
            # Cut short or no usage sent: count ourselves, off the event loop.
            counted = await asyncio.get_running_loop().run_in_executor(
                None, openai.counted_usage, call.request, call.route.encoding, call.route.rates,
                "".join(tracker.relayed_text))
            status = "partial" if status == "ok" else status
        metered = meter(call.price, tracker.reported, counted, self._limits.usage_tokens_max)
        record = usage_record(call, hold.amount_nusd, metered, status, upstream_s)
        result = await hold.charge(record)
        observe(self._metrics, call, status, metered, upstream_s, record.cost_nusd)
        provider_cost_usd = None if call.byok is None else format_usd(record.provider_cost_nusd or 0)
        return (format_usd(record.cost_nusd) if isinstance(result, SettleResult) else None), provider_cost_usd


async def _start(response: web.StreamResponse, request: web.Request, call: Call, tracker: StreamTracker,
                 early: list[bytes]) -> None:
    response.headers["X-Model"] = tracker.served_model or call.route.model_name
    mark_response_started(request)
    try:
        await response.prepare(request)
    except (ConnectionError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone() from exc
    for event in early:
        await _write(response, event)
    early.clear()


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except (ConnectionError, aiohttp.ClientConnectionError, RuntimeError) as exc:
        raise ClientGone() from exc


async def _write_eof(response: web.StreamResponse) -> None:
    try:
        await response.write_eof()
    except (ConnectionError, aiohttp.ClientConnectionError) as exc:
        raise ClientGone() from exc
