"""The aiohttp application: routes, and the resources opened for its lifetime."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from config.settings import Settings
from gateway import errors
from gateway.http import admin, api, api_provider_keys, models, readiness, webhooks
from gateway.http.api_base import MANAGEMENT_KEYS
from gateway.http.auth import KeyCache, bearer_matches
from gateway.http.notices import Notices
from gateway.http.proxy import ENDPOINTS, Proxy, new_request_id
from gateway.http.responses import error_response, response_started
from gateway.http.state import STATE, GatewayState
from gateway.metering import tokens
from gateway.metrics import Metrics
from gateway.money.billing import Billing
from gateway.money.byok import ByokKeys
from gateway.money.calls import build_routes
from gateway.money.events import Events
from gateway.money.hold_recovery import heartbeat_forever
from gateway.money.prices import PriceBook
from gateway.money.provider_keys import StoredKeys
from gateway.money.replay import replay_at_start
from gateway.money.secrets_box import BoxUnavailable, SecretsBox, secrets_box
from gateway.money.settlement import settler_for
from gateway.money.stores import Stores, notice_bus, open_stores, rate_store
from gateway.money.sweeper import expire_credit_forever, sweep_forever
from gateway.money.topups import open_payments
from gateway.money.traffic import Traffic
from gateway.money.webhook_delivery import Deliverer
from gateway.upstream import Upstream
from ledger.errors import LedgerError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = logging.getLogger(__name__)


def create_app(settings: Settings, stores: Stores | None = None) -> web.Application:
    """stores=None: open them from settings (and close them) with the app."""
    app = web.Application(client_max_size=settings.limits.body_bytes_max, middlewares=[_errors_middleware])
    proxy = Proxy(settings.limits)
    app.cleanup_ctx.append(_lifetime(settings, stores, proxy))
    for path in ENDPOINTS:
        app.router.add_post(path, proxy.handle)
    app.router.add_get("/v1/models", models.list_models)
    app.router.add_get("/v1/models/{model:.+}", models.retrieve_model)
    app.router.add_get("/v1/usage/{request_id}", models.get_usage)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readiness.readyz)
    api.add_routes(app, settings.wallet)  # the wallet API for owners (management keys)
    webhooks.add_routes(app)  # Stripe's events; 404 payments_disabled unless [stripe] is enabled
    if settings.admin_token is not None:
        admin.add_routes(app)  # no admin token: /admin/* does not exist (404), rather than a door to guess at
    return app


def _lifetime(settings: Settings, given: Stores | None, proxy: Proxy) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        stores = given or await open_stores(settings)
        limits = settings.limits
        settler = settler_for(stores.book, stores.holds, settings)
        # Settlements journaled at the last shutdown are committed before serving.
        await replay_at_start(settler.replayer())
        upstream = Upstream.open(limits)
        metrics = Metrics.create()
        routes = build_routes(settings)
        await asyncio.get_running_loop().run_in_executor(
            None, tokens.warm_up, {r.encoding.name for r in routes.values()})
        keys = KeyCache(stores.book, limits.key_cache_ttl_s, limits.key_cache_entries_max)
        billing = Billing(stores.book, stores.holds, settler, limits.hold_ttl_s, limits.wallet_refresh_interval_s)
        payments = open_payments(settings, stores.book, stores.holds)
        if payments is not None:
            settler.observers.append(payments.reloader.observe)
        box = _master_key_box(settings)
        byok = ByokKeys(settings.byok, StoredKeys(stores.book, box, settings.byok.cache_ttl_s,
                                                  settings.byok.cache_entries_max))
        events = Events(stores.book)
        prices = PriceBook({name: route.price for name, route in routes.items()})
        try:
            await prices.refresh(stores.book)
        except LedgerError as exc:  # serve at the config's prices; the refresh task tries again
            log.warning("prices: the catalogue could not be read at start (%s): [models] prices apply", exc)
        notices = Notices(notice_bus(stores.holds, limits.redis_timeout_s))
        traffic = Traffic(rate_store(stores.holds, settings.traffic.rate_timeout_s), settings.traffic.parallel_slot_ttl_s,
                          metrics)
        notices.subscribe(keys.hear)
        notices.subscribe(app[MANAGEMENT_KEYS].hear)
        notices.subscribe(api_provider_keys.listener(byok.stored))
        app[STATE] = GatewayState(
            settings=settings, book=stores.book, holds=stores.holds, settler=settler, keys=keys, upstream=upstream,
            metrics=metrics, routes=routes,
            proxy=proxy.attach(keys, routes, billing, upstream, metrics, traffic, settings.traffic, byok, events,
                               prices),
            notices=notices, byok=byok, box=box, payments=payments,
        )
        settler.start()
        sweeper = asyncio.create_task(sweep_forever(
            stores.book, stores.holds, limits.expiry_sweep_interval_s, limits.expiry_sweep_batch_max, metrics))
        # Redis may lose its data while this process has holds in flight: notice it even when idle.
        heartbeat = asyncio.create_task(heartbeat_forever(stores.holds, limits.redis_heartbeat_interval_s))
        expiry = asyncio.create_task(expire_credit_forever(
            stores.book, stores.holds, settings.topup.credit_expiry_sweep_s, settings.topup.credit_expiry_batch_max))
        listening = asyncio.create_task(notices.run())
        repricing = asyncio.create_task(prices.refresh_forever(stores.book, limits.price_refresh_s))
        tasks: tuple[asyncio.Task[None], ...] = (sweeper, heartbeat, expiry, listening, repricing)
        if settings.webhooks.enabled:
            deliverer = Deliverer(stores.book, upstream, box, settings.webhooks)
            tasks += (asyncio.create_task(deliverer.run_forever()),)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await events.close()
            await settler.close()
            if payments is not None:
                await payments.close()
            await upstream.close()
            if given is None:
                await stores.close()

    return lifetime


def _master_key_box(settings: Settings) -> SecretsBox | BoxUnavailable:
    """The master key's box; without one the gateway serves all the same (storing a provider key says why not)."""
    box = secrets_box(settings.byok)
    if isinstance(box, BoxUnavailable):
        log.info("BYOK: provider keys cannot be stored or read: %s", box.reason)
    return box


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own HTTP errors (404 route, 405, 413) in OpenAI's shape, and a JSON 500 for any bug.

    The 500 names a request id that is also in the log line with the
    traceback, and says nothing else: exception text can hold internals.
    """
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(errors.body_too_large(request.app[STATE].settings.limits.body_bytes_max))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        return error_response(errors.ApiError(exc.status, exc.reason, kind, exc.reason.lower().replace(" ", "_")))
    except Exception:
        if response_started(request) or request.transport is None or request.transport.is_closing():
            raise  # headers already sent, or the client is gone: aiohttp can only close the connection
        request_id = new_request_id()
        log.exception("unexpected error in %s %r (request id %s)", request.method, request.path, request_id)
        return error_response(errors.internal_error(request_id), request_id)


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.settings.metrics_token is not None and not bearer_matches(
            request.headers.get("Authorization"), state.settings.metrics_token):
        return error_response(errors.invalid_metrics_token())
    body = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
