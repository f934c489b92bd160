"""The read-only endpoints of a key: its models, and the usage of its requests."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.errors import ApiError
from gateway.http import admin_models
from gateway.http.auth import authenticate
from gateway.http.responses import error_response
from gateway.http.state import STATE
from ledger.book import SettledUsage
from ledger.money import format_usd


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return error_response(key)
    # A key kept to some models sees only those, as OpenAI lists only what a key may use.
    data = [_model_object(name, route.provider_name) for name, route in sorted(state.routes.items())
            if key.allowed_models is None or name in key.allowed_models]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: what the OpenAI SDK's models.retrieve() calls."""
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return error_response(key)
    name = request.match_info["model"]
    route = state.routes.get(name)
    if route is None or (key.allowed_models is not None and name not in key.allowed_models):
        return error_response(errors.model_not_found(name))
    return web.json_response(_model_object(name, route.provider_name))


def _model_object(name: str, provider_name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": provider_name}


async def get_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return error_response(key)
    path = admin_models.parse(admin_models.RequestPath, dict(request.match_info))
    if isinstance(path, ApiError):
        return error_response(path)
    request_id = path.request_id
    settled = await state.book.usage(request_id)
    if settled is None or settled.record.wallet_id != key.wallet_id:
        return error_response(errors.not_found(f"No settled request {request_id!r} for this key's wallet."))
    return web.json_response(usage_view(settled))


def usage_view(settled: SettledUsage) -> dict[str, object]:
    record = settled.record
    return {
        "id": record.request_id, "object": "usage", "created_at": settled.created_at,
        "model": record.model, "upstream": record.upstream, "endpoint": record.endpoint,
        "status": record.status, "usage_source": record.usage_source, "key_id": record.key_id, "bot": record.bot,
        "usage": {"prompt_tokens": record.prompt_tokens, "cached_tokens": record.cached_tokens,
                  "completion_tokens": record.completion_tokens,
                  "total_tokens": record.prompt_tokens + record.completion_tokens},
        "prices_per_1m": {"input": format_usd(record.input_per_1m_nusd), "cached_input": format_usd(record.cached_input_per_1m_nusd),
                          "output": format_usd(record.output_per_1m_nusd), "per_call": format_usd(record.per_call_nusd)},
        "cost": format_usd(record.cost_nusd), "cost_nusd": record.cost_nusd,
        # What the provider's price list says it cost: the cost itself, unless the call was BYOK (cost: the fee).
        "byok": record.byok, "provider_cost_nusd": record.provider_cost_nusd,
        "charged": format_usd(settled.charged_nusd), "charged_nusd": settled.charged_nusd,
        "shortfall": format_usd(settled.shortfall_nusd), "shortfall_nusd": settled.shortfall_nusd,
        "held_nusd": record.held_nusd, "latency_ms": record.latency_ms, "upstream_latency_ms": record.upstream_latency_ms,
    }
