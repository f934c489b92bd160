"""Everything a request handler needs, built once per app (see gateway/app.py)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from aiohttp import web

from config.pricing import ModelPrice
from config.settings import ModelConfig, Provider, Settings
from gateway.auth import KeyCache
from gateway.billing import Billing
from gateway.estimate import rates_of
from gateway.media import MediaRates
from gateway.metrics import Metrics
from gateway.settlement import Settler
from gateway.tokens import EncodingChoice, encoding_for
from ledger.book import Book
from ledger.holds import HoldStore


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
    # Built once: the headers of every request sent upstream for this model.
    headers_json: dict[str, str]
    headers_stream: dict[str, str]


@dataclass
class GatewayState:
    settings: Settings
    book: Book
    holds: HoldStore
    settler: Settler
    billing: Billing
    keys: KeyCache
    session: aiohttp.ClientSession
    metrics: Metrics
    routes: dict[str, Route]
    in_flight: int = 0


STATE = web.AppKey("meterway_state", GatewayState)


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
            rates_of(name, model),
            headers_json={"Content-Type": "application/json", "Accept": "application/json", **auth},
            headers_stream={"Content-Type": "application/json", "Accept": "text/event-stream", **auth},
        )
    return routes
