"""The aiohttp application: routes, and the resources opened for its lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from config.settings import Settings
from gateway import admin, admin_models, errors, proxy, readiness, tokens
from gateway.auth import KeyCache, authenticate, bearer_matches
from gateway.backends import Stores, open_stores
from gateway.billing import Billing
from gateway.errors import ApiError
from gateway.hold_recovery import heartbeat_forever
from gateway.metrics import Metrics
from gateway.settlement import replay_at_start, settler_for
from gateway.state import STATE, GatewayState, build_routes
from gateway.sweeper import sweep_forever
from ledger.book import SettledUsage
from ledger.money import format_usd

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)

def create_app(settings: Settings, stores: Stores | None = None) -> web.Application:
    """stores=None: open them from settings (and close them) with the app."""
    app = web.Application(client_max_size=settings.limits.body_bytes_max, middlewares=[_errors_middleware])
    app.cleanup_ctx.append(_lifetime(settings, stores))
    for path in proxy.ENDPOINTS:
        app.router.add_post(path, proxy.handle)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", retrieve_model)
    app.router.add_get("/v1/usage/{request_id}", get_usage)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readiness.readyz)
    if settings.admin_token is not None:
        admin.add_routes(app)  # no admin token: /admin/* does not exist (404), rather than a door to guess at
    return app


def _lifetime(settings: Settings, given: Stores | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        stores = given or await open_stores(settings)
        limits = settings.limits
        settler = settler_for(stores.book, stores.holds, settings)
        # Settlements journaled at the last shutdown are committed before serving.
        await replay_at_start(settler)
        connector = aiohttp.TCPConnector(limit=limits.upstream_connections_max, limit_per_host=limits.upstream_connections_max)
        timeout = aiohttp.ClientTimeout(total=limits.upstream_total_timeout_s, sock_connect=limits.upstream_connect_timeout_s)
        session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        metrics = Metrics.create()
        routes = build_routes(settings)
        await asyncio.get_running_loop().run_in_executor(
            None, tokens.warm_up, {r.encoding.name for r in routes.values()})
        state = GatewayState(
            settings=settings, book=stores.book, holds=stores.holds, settler=settler,
            billing=Billing(stores.book, stores.holds, settler, limits.hold_ttl_s, limits.wallet_refresh_interval_s),
            keys=KeyCache(stores.book, limits.key_cache_ttl_s, limits.key_cache_entries_max),
            session=session, metrics=metrics, routes=routes,
        )
        app[STATE] = state
        settler.start()
        sweeper = asyncio.create_task(sweep_forever(
            stores.book, stores.holds, limits.expiry_sweep_interval_s, limits.expiry_sweep_batch_max, metrics))
        # Redis may lose its data while this process has holds in flight: notice it even when idle.
        heartbeat = asyncio.create_task(heartbeat_forever(stores.holds, limits.redis_heartbeat_interval_s))
        try:
            yield
        finally:
            sweeper.cancel()
            heartbeat.cancel()
            await asyncio.gather(sweeper, heartbeat, return_exceptions=True)
            await settler.close()
            await session.close()
            if given is None:
                await stores.close()

    return lifetime


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404 route, 405, 413) in OpenAI's shape, and a JSON 500 for any bug.

    The 500 names a request id that is also in the log line with the
    traceback, and says nothing else: exception text can hold internals.
    """
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return errors.body_too_large(request.app[STATE].settings.limits.body_bytes_max).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return ApiError(exc.status, exc.reason, kind, exc.reason.lower().replace(" ", "_")).response()
    except Exception:
        if errors.response_started(request) or request.transport is None or request.transport.is_closing():
            raise  # headers already sent, or the client is gone: aiohttp can only close the connection
        request_id = proxy.new_request_id()
        log.exception("unexpected error in %s %r (request id %s)", request.method, request.path, request_id)
        return errors.internal_error(request_id).response(request_id)


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return key.response()
    data = [_model_object(name, route.provider_name) for name, route in sorted(state.routes.items())]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: what the OpenAI SDK's models.retrieve() calls."""
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return key.response()
    name = request.match_info["model"]
    route = state.routes.get(name)
    if route is None:
        return errors.model_not_found(name).response()
    return web.json_response(_model_object(name, route.provider_name))


def _model_object(name: str, provider_name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": provider_name}


async def get_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    key = await authenticate(state.keys, request.headers.get("Authorization"))
    if isinstance(key, ApiError):
        return key.response()
    path = admin_models.parse(admin_models.RequestPath, dict(request.match_info))
    if isinstance(path, ApiError):
        return path.response()
    request_id = path.request_id
    settled = await state.book.usage(request_id)
    if settled is None or settled.record.wallet_id != key.wallet_id:
        return errors.not_found(f"No settled request {request_id!r} for this key's wallet.").response()
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
        "charged": format_usd(settled.charged_nusd), "charged_nusd": settled.charged_nusd,
        "shortfall": format_usd(settled.shortfall_nusd), "shortfall_nusd": settled.shortfall_nusd,
        "held_nusd": record.held_nusd, "latency_ms": record.latency_ms, "upstream_latency_ms": record.upstream_latency_ms,
    }


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.settings.metrics_token is not None and not bearer_matches(
            request.headers.get("Authorization"), state.settings.metrics_token):
        return errors.invalid_metrics_token().response()
    body = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
