"""The OpenAI-compatible endpoints: one request from the socket to its charge.

    authenticate (auth.py) -> validate (dialects/openai.py) -> estimate its worst case
    -> billing.hold (money/billing.py) -> forward (upstream.py), or relay a stream (relay.py)
    -> meter (metering/metering.py) -> hold.charge -> the Settler (money/settlement.py) -> the ledger

Every hold lives inside one `async with`: it ends in exactly one of charge or
release, whatever happens in between (ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiohttp import web

from config.settings import Limits
from gateway import errors
from gateway.dialects import openai
from gateway.errors import ApiError
from gateway.http.auth import KeyCache, authenticate
from gateway.http.relay import Relay
from gateway.http.responses import error_response, observe, passthrough_error, refusal_error, upstream_failed
from gateway.metering.metering import meter
from gateway.metrics import Metrics
from gateway.money.billing import Billing, Hold, Refused
from gateway.money.calls import Call, Route, usage_record
from gateway.money.operations import REQUEST_ID_PREFIX
from gateway.upstream import Upstream, UpstreamFailed
from ledger.book import SettleResult
from ledger.money import format_usd

ENDPOINTS = openai.ENDPOINTS


def new_request_id() -> str:
    return f"{REQUEST_ID_PREFIX}{uuid.uuid4().hex}"


class Proxy:
    """The request handler, with only the collaborators it needs.

    Made with the app, so that its handle() is the route's handler itself;
    its collaborators are attached when the app starts (gateway/http/app.py).
    """

    _keys: KeyCache
    _routes: dict[str, Route]
    _billing: Billing
    _upstream: Upstream
    _metrics: Metrics
    _relay: Relay

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.in_flight = 0

    def attach(self, keys: KeyCache, routes: dict[str, Route], billing: Billing, upstream: Upstream,
               metrics: Metrics) -> Proxy:
        self._keys = keys
        self._routes = routes
        self._billing = billing
        self._upstream = upstream
        self._metrics = metrics
        self._relay = Relay(upstream, metrics, self._limits)
        return self

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = new_request_id()
        endpoint = ENDPOINTS[request.path]
        if self.in_flight >= self._limits.requests_in_flight_max:
            return self._refuse(endpoint, errors.service_unavailable("Too many requests in flight; retry shortly.",
                                                                     "overloaded"), request_id)
        self.in_flight += 1
        try:
            call = await self._prepare(request, endpoint, request_id, started)
            if isinstance(call, ApiError):
                return self._refuse(endpoint, call, request_id)
            route = call.route
            estimate = openai.estimate(call.request, len(call.body), route.price, route.encoding, route.rates,
                                       self._limits.tokenize_bytes_max)
            held = await self._billing.hold(call, estimate)
            if isinstance(held, Refused):
                return self._refuse(endpoint, refusal_error(held), request_id)
            async with held as hold:
                if call.request.stream:
                    return await self._relay.relay(request, call, hold)
                return await self._forward(call, hold)
        finally:
            self.in_flight -= 1

    def _refuse(self, endpoint: str, error: ApiError, request_id: str) -> web.Response:
        self._metrics.refused(endpoint, error.status)
        return error_response(error, request_id)

    async def _prepare(self, request: web.Request, endpoint: str, request_id: str, started: float) -> Call | ApiError:
        key = await authenticate(self._keys, request.headers.get("Authorization"))
        if isinstance(key, ApiError):
            return key
        limit = self._limits.body_bytes_max
        if request.content_length is not None and request.content_length > limit:
            return errors.body_too_large(limit)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return errors.body_too_large(limit)
        payload = openai.parse_body(body)
        if isinstance(payload, ApiError):
            return payload
        model_name = openai.model_name(payload)
        if isinstance(model_name, ApiError):
            return model_name
        route = self._routes.get(model_name)
        if route is None or route.model.kind != endpoint:
            return errors.model_not_found(model_name)
        if key.allowed_models is not None and model_name not in key.allowed_models:
            return errors.model_not_allowed(model_name)
        valid = openai.validate(endpoint, payload, route.model)
        if isinstance(valid, ApiError):
            return valid
        return Call(request_id, endpoint, key, route, valid, body, started)

    async def _forward(self, call: Call, hold: Hold) -> web.StreamResponse:
        sent = time.perf_counter()
        reply = await self._upstream.post(call.route.url, call.body, call.route.headers_json)
        if isinstance(reply, UpstreamFailed):
            await hold.release()
            return upstream_failed(self._metrics, call, reply)
        upstream_s = time.perf_counter() - sent
        if reply.status != 200:
            await hold.release()
            return passthrough_error(self._metrics, call, reply.status, reply.body, reply.headers)
        data = openai.loads_or_none(reply.body)
        reported = openai.usage_from_body(data.get("usage")) if data else None
        counted = None
        if reported is None:
            # No usage from the upstream: count it ourselves, off the event loop.
            counted = await asyncio.get_running_loop().run_in_executor(
                None, openai.counted_usage, call.request, call.route.encoding, call.route.rates, data)
        metered = meter(call.route.price, reported, counted, self._limits.usage_tokens_max)
        headers = {**openai.relayed_headers(reply.headers),
                   "Content-Type": reply.headers.get("Content-Type", "application/json"),
                   "X-Request-Id": call.request_id, "X-Model": openai.served_model(data) or call.route.model_name,
                   "X-Total-Tokens": str(metered.usage.total_tokens)}
        result = await hold.charge(usage_record(call, hold.amount_nusd, metered, "ok", upstream_s))
        if isinstance(result, SettleResult):
            headers["X-Usage-Cost"] = format_usd(metered.cost_nusd)
            if result.shortfall_nusd:
                headers["X-Usage-Shortfall"] = format_usd(result.shortfall_nusd)
        observe(self._metrics, call, "ok", metered, upstream_s)
        return web.Response(status=200, body=reply.body, headers=headers)
