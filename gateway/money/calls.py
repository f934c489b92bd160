"""What the money service bills: a call (a valid request on a route), and its usage record.

A Route is resolved once at start for each configured model: where it goes,
what it costs, how its tokens are counted. A Call is one request that passed
every check and may be forwarded; its UsageRecord is what settles it. A BYOK
call (gateway/money/byok.py) goes with the caller's provider key, and its
record charges the BYOK fee where a plain call charges the cost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from config.byok import BASIS_POINTS_PER_WHOLE
from config.pricing import ModelPrice
from config.settings import ModelConfig, Provider, Settings
from gateway.dialects.openai import UPSTREAM_PATHS, Request
from gateway.metering.media import MediaRates
from gateway.metering.metering import Metered, rates_of
from gateway.metering.tokens import EncodingChoice, encoding_for
from gateway.money.prices import Priced
from ledger.book import FEES_ACCOUNT, REVENUE_ACCOUNT, ApiKeyRecord, Payee, UsageRecord
from ledger.prices import CONFIG_VERSION

log = logging.getLogger("meterway.calls")


@dataclass(frozen=True)
class Route:
    """Where one model goes and what it costs; resolved once at start."""

    model_name: str
    model: ModelConfig
    price: ModelPrice
    provider_name: str
    provider: Provider
    api_key: str | None
    encoding: EncodingChoice  # what this model's tokens are counted with
    rates: MediaRates  # what its images, audio and files cost in tokens
    # Built once: where requests for this model go, and their headers.
    url: str
    headers_json: dict[str, str]
    headers_stream: dict[str, str]


def build_routes(settings: Settings) -> dict[str, Route]:
    routes = {}
    for name, model in settings.models.items():
        found = settings.provider_of(name)
        assert found is not None, f"settings validation lets no model without a provider through: {name}"
        provider_name, provider = found
        api_key = provider.resolve_api_key()
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        routes[name] = Route(
            name, model, model.price(), provider_name, provider, api_key, encoding_for(name, model.encoding),
            rates_of(name, model), url=provider.base_url + UPSTREAM_PATHS[model.kind],
            headers_json={"Content-Type": "application/json", "Accept": "application/json", **auth},
            headers_stream={"Content-Type": "application/json", "Accept": "text/event-stream", **auth},
        )
    return routes


@dataclass(frozen=True, repr=False)
class Byok:
    """A call forwarded with the caller's own provider key: the headers that carry it, and the fee."""

    source: str  # "header" (X-Provider-Api-Key) or "stored" (the wallet's or its bot's key)
    key_id: str | None  # the stored key's id; None for a header's
    fee_bps: int  # the wallet pays this share of the provider cost (config [byok])
    headers_json: dict[str, str]  # the route's headers, with the caller's key
    headers_stream: dict[str, str]

    def __repr__(self) -> str:  # the headers hold the key: never in a log line or a traceback
        return f"Byok({self.source!r}, {self.key_id!r}, fee_bps={self.fee_bps})"


@dataclass(frozen=True)
class Call:
    """A request that passed every check and may be forwarded."""

    request_id: str
    endpoint: str  # "chat", "completion" or "embedding"
    key: ApiKeyRecord
    route: Route
    request: Request
    body: bytes
    started: float  # time.perf_counter() when the request arrived
    conversation_id: str | None = None  # X-Conversation-Id: a bot's per-conversation cap counts by it
    byok: Byok | None = None  # set: forwarded with the caller's provider key, charged the BYOK fee
    priced: Priced | None = None  # the catalogue's price in force when it started (None: the route's, from config)

    def __post_init__(self) -> None:
        assert self.endpoint == self.request.endpoint == self.route.model.kind, self

    @property
    def price(self) -> ModelPrice:
        return self.route.price if self.priced is None else self.priced.price

    @property
    def price_version(self) -> str:
        return CONFIG_VERSION if self.priced is None else self.priced.version


def usage_record(call: Call, held_nusd: int, metered: Metered, status: str, upstream_s: float) -> UsageRecord:
    usage, price = metered.usage, call.price
    if metered.capped_from is not None:
        given = metered.capped_from
        # Loud on purpose: a provider bug or an attack; the row is flagged by its usage_source.
        log.error("request %s: %s reported absurd usage (prompt_tokens=%d, cached_tokens=%d, completion_tokens=%d); "
                  "recorded as %s with prompt_tokens=%d, completion_tokens=%d, cost %d nUSD (the wallet pays what it "
                  "can, the rest is a shortfall)", call.request_id, call.route.model_name, given.prompt_tokens,
                  given.cached_tokens, given.completion_tokens, metered.source, usage.prompt_tokens,
                  usage.completion_tokens, metered.cost_nusd)
    cost_nusd = metered.cost_nusd if call.byok is None else byok_fee_nusd(metered.cost_nusd, call.byok.fee_bps)
    return UsageRecord(
        request_id=call.request_id, key_id=call.key.key_id, wallet_id=call.key.wallet_id, bot=call.key.bot,
        model=call.route.model_name, upstream=call.route.provider_name, endpoint=call.endpoint, status=status,
        usage_source=metered.source, prompt_tokens=usage.prompt_tokens, cached_tokens=usage.cached_tokens,
        completion_tokens=usage.completion_tokens, input_per_1m_nusd=price.input_per_1m_nusd,
        cached_input_per_1m_nusd=price.cached_input_per_1m_nusd, output_per_1m_nusd=price.output_per_1m_nusd,
        per_call_nusd=price.per_call_nusd, cost_nusd=cost_nusd, held_nusd=held_nusd,
        latency_ms=(time.perf_counter() - call.started) * 1000, upstream_latency_ms=upstream_s * 1000,
        payees=payees(call.route, cost_nusd) if call.byok is None else fee_payees(cost_nusd),
        provider_cost_nusd=metered.cost_nusd, byok=call.byok is not None, price_version=call.price_version,
        conversation_id=call.conversation_id,
    )


def payees(route: Route, cost_nusd: int) -> tuple[Payee, ...]:
    """Who receives a request's cost: the pricing decision the ledger settles by.

    Today all of it is the operator's revenue. A BYOK fee, a creator's share or
    a referral cut (later issues) are more payees here; the ledger needs no change.
    """
    assert cost_nusd >= 0, cost_nusd
    return (Payee(REVENUE_ACCOUNT, cost_nusd),) if cost_nusd else ()


def byok_fee_nusd(provider_cost_nusd: int, fee_bps: int) -> int:
    """The BYOK fee: fee_bps of the provider cost, rounded up (never more than 1 nUSD above the rate)."""
    assert provider_cost_nusd >= 0 and 0 <= fee_bps <= BASIS_POINTS_PER_WHOLE, (provider_cost_nusd, fee_bps)
    return -(-provider_cost_nusd * fee_bps // BASIS_POINTS_PER_WHOLE)


def fee_payees(fee_nusd: int) -> tuple[Payee, ...]:
    """A BYOK call's one payee: its fee, to the fees account (none when free)."""
    return (Payee(FEES_ACCOUNT, fee_nusd),) if fee_nusd else ()
