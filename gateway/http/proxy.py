"""The OpenAI-compatible endpoints: one request from the socket to its charge.

    authenticate (auth.py) -> validate (dialects/openai.py) -> the provider key (money/byok.py)
    -> estimate its worst case -> billing.hold (money/billing.py) -> forward (upstream.py), or relay a stream (relay.py)
    -> meter (metering/metering.py) -> hold.charge -> the Settler (money/settlement.py) -> the ledger

Every hold lives inside one `async with`: it ends in exactly one of charge or
release, whatever happens in between (ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

from aiohttp import web

from config.pricing import TokenUsage
from config.settings import Limits
from config.traffic import TrafficSettings
from gateway import errors
from gateway.dialects import openai
from gateway.dialects import openai_friendly as friendly
from gateway.errors import ApiError
from gateway.http.auth import KeyCache, authenticate
from gateway.http.client_ip import IpNetwork, client_address
from gateway.http.relay import Relay
from gateway.http.responses import (
    byok_headers,
    error_response,
    observe,
    passthrough_error,
    refusal_error,
    upstream_failed,
)
from gateway.metering.metering import Metered, meter
from gateway.metrics import Metrics
from gateway.money.billing import SHORT_OF_MONEY, Billing, Hold, Refused
from gateway.money.byok import PROVIDER_KEY_HEADER, ByokKeys, fee_estimate
from gateway.money.calls import Call, Route, usage_record
from gateway.money.events import Events
from gateway.money.operations import REQUEST_ID_PREFIX
from gateway.money.prices import PriceBook
from gateway.money.traffic import Traffic
from gateway.upstream import Upstream, UpstreamFailed
from ledger.book import SettleResult
from ledger.money import format_usd

ENDPOINTS = openai.ENDPOINTS


CONVERSATION_HEADER = "X-Conversation-Id"


@dataclass
class Served:
    """What a served request held: its tokens per minute count what it was charged for (0: nothing)."""

    hold: Hold | None = None

    @property
    def tokens(self) -> int:
        return 0 if self.hold is None else self.hold.tokens


def conversation_id(given: str | None, chars_max: int) -> str | None | ApiError:
    """The X-Conversation-Id a bot's per-conversation cap counts by: printable ASCII, bounded."""
    if given is None:
        return None
    if not 0 < len(given) <= chars_max or not given.isascii() or not given.isprintable():
        return errors.invalid_request(f"{CONVERSATION_HEADER} must be 1 to {chars_max} printable ASCII characters.",
                                      CONVERSATION_HEADER, "invalid_conversation_id")
    return given


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
    _traffic: Traffic
    _trusted: tuple[IpNetwork, ...]
    _byok: ByokKeys

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self.in_flight = 0

    def attach(self, keys: KeyCache, routes: dict[str, Route], billing: Billing, upstream: Upstream,
               metrics: Metrics, traffic: Traffic, settings: TrafficSettings, byok: ByokKeys, events: Events,
               prices: PriceBook) -> Proxy:
        self._prices = prices
        self._traffic = traffic
        self._events = events
        self._trusted = settings.trusted_networks()
        self._forwarded_chars_max = settings.forwarded_for_chars_max
        self._keys = keys
        self._byok = byok
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
            rules = call.key.rules
            if rules is None or not rules.limits_traffic:
                return await self._serve(request, call, Served())
            refused = await self._traffic.admit(call.key.key_id, rules, request_id)
            if refused is not None:
                return self._refuse(endpoint, refused, request_id)
            served = Served()
            try:
                return await self._serve(request, call, served)
            finally:  # every way out (a client gone mid-stream too) frees the slot, and counts the tokens charged
                await self._traffic.finish(call.key.key_id, rules, request_id, served.tokens)
        finally:
            self.in_flight -= 1

    async def _serve(self, request: web.Request, call: Call, served: Served) -> web.StreamResponse:
        """Hold, forward or relay, charge; `served` keeps the hold, so the tokens charged are known however it ends."""
        route = call.route
        estimate = openai.estimate(call.request, len(call.body), call.price, route.encoding, route.rates,
                                   self._limits.tokenize_bytes_max)
        if call.byok is not None:
            estimate = fee_estimate(estimate, call.byok.fee_bps)  # 0 with no fee: a free call, nothing held
        held = await self._billing.hold(call, estimate)
        if isinstance(held, Refused):
            if held.cap is not None:  # owners hear of it once per cap and window (money/events.py)
                self._events.cap_reached(call.key.wallet_id, call.key.key_id, held.cap)
            friendly = call.key.bot_rule.friendly_message if call.key.bot_rule is not None else None
            if friendly is not None and held.reason in SHORT_OF_MONEY and call.endpoint == "chat":
                return await self._friendly(request, call, held, friendly)
            return self._refuse(call.endpoint, refusal_error(held), call.request_id)
        served.hold = held
        async with held as hold:
            if call.request.stream:
                return await self._relay.relay(request, call, hold)
            return await self._forward(call, hold)

    def _refuse(self, endpoint: str, error: ApiError, request_id: str) -> web.Response:
        self._metrics.refused(endpoint, error.status)
        return error_response(error, request_id)

    async def _prepare(self, request: web.Request, endpoint: str, request_id: str, started: float) -> Call | ApiError:
        key = await authenticate(self._keys, request.headers.get("Authorization"))
        if isinstance(key, ApiError):
            return key
        if key.rules is not None and key.rules.ip_allow is not None:
            address = client_address(request, self._trusted, self._forwarded_chars_max)
            if not key.rules.allows(address):
                return errors.ip_not_allowed(address)
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
        conversation = conversation_id(request.headers.get(CONVERSATION_HEADER), self._limits.conversation_id_chars_max)
        if isinstance(conversation, ApiError):
            return conversation
        priced = self._prices.at(model_name, time.time())  # the version in force when the request started
        provider_key = request.headers.get(PROVIDER_KEY_HEADER)
        if not self._byok.may_apply(provider_key, key.wallet_id):
            return Call(request_id, endpoint, key, route, valid, body, started, conversation, None, priced)
        byok = await self._byok.for_call(provider_key, key, route)
        if isinstance(byok, ApiError):
            return byok
        return Call(request_id, endpoint, key, route, valid, body, started, conversation, byok, priced)

    async def _friendly(self, request: web.Request, call: Call, refused: Refused, message: str) -> web.StreamResponse:
        """A bot's kind answer instead of a refusal: free, nothing forwarded, recorded as refused."""
        self._metrics.refused(call.endpoint, 402)
        model = call.route.model_name
        headers = {"X-Request-Id": call.request_id, "X-Model": model, "X-Usage-Cost": format_usd(0),
                   "X-Meterway-Refused": refused.reason.value}
        metered = Metered(TokenUsage(0, 0), "none", 0)
        held = await self._billing.reserve(call.key.wallet_id, call.request_id, 0)
        assert isinstance(held, Hold) and held.amount_nusd == 0, held  # a free call is never refused
        async with held as hold:
            await hold.charge(usage_record(call, 0, metered, "refused", 0.0))
        if not call.request.stream:
            return web.Response(body=friendly.completion_body(call.request_id, model, message),
                                content_type="application/json", headers=headers)
        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in friendly.completion_events(call.request_id, model, message, call.request.client_wants_usage):
            await response.write(event)
        await response.write_eof()
        return response

    async def _forward(self, call: Call, hold: Hold) -> web.StreamResponse:
        sent = time.perf_counter()
        headers_out = call.route.headers_json if call.byok is None else call.byok.headers_json
        reply = await self._upstream.post(call.route.url, call.body, headers_out)
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
        metered = meter(call.price, reported, counted, self._limits.usage_tokens_max)
        headers = {**openai.relayed_headers(reply.headers),
                   "Content-Type": reply.headers.get("Content-Type", "application/json"),
                   "X-Request-Id": call.request_id, "X-Model": openai.served_model(data) or call.route.model_name,
                   "X-Total-Tokens": str(metered.usage.total_tokens)}
        record = usage_record(call, hold.amount_nusd, metered, "ok", upstream_s)
        result = await hold.charge(record)
        if isinstance(result, SettleResult):
            headers["X-Usage-Cost"] = format_usd(record.cost_nusd)
            if result.shortfall_nusd:
                headers["X-Usage-Shortfall"] = format_usd(result.shortfall_nusd)
        if call.byok is not None:
            headers.update(byok_headers(call, metered.cost_nusd))
        observe(self._metrics, call, "ok", metered, upstream_s, record.cost_nusd)
        return web.Response(status=200, body=reply.body, headers=headers)
