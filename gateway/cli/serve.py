"""`meterway serve` and `meterway migrate`: the checks that refuse a start, the startup summary, the workers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import Settings
from gateway.money import stores
from gateway.money.stores import EXIT_USAGE

CONFIG_ENV = "MW_CONFIG"  # names the config file when --config does not; main() reads it too


def migrate(settings: Settings, args: argparse.Namespace) -> int:
    print_applied(asyncio.run(stores.migrate(settings)), settings)
    return 0


def print_applied(applied: list[int], settings: Settings) -> None:
    where = stores.describe_database(settings)
    if applied:
        print(f"applied migrations {', '.join(f'{v:04d}' for v in applied)} to {where}", flush=True)
    else:
        print(f"{where}: schema up to date, nothing to apply", flush=True)


def serve(settings: Settings, args: argparse.Namespace) -> int:
    listen = settings.listen.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    settings = settings.model_copy(update={"listen": listen})
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.workers > 1 and (settings.embedded or not settings.redis_url):
        print("meterway: --workers > 1 needs DATABASE_URL (Postgres) and REDIS_URL: the embedded SQLite "
              "store and in-process holds cannot be shared between processes.", file=sys.stderr)
        return EXIT_USAGE
    if settings.metrics_token is None and not _is_loopback(settings.listen.host):
        print(f"meterway: listening on {settings.listen.host} would open /metrics (revenue per model) to the "
              "network: set metrics_token (MW_METRICS_TOKEN), or listen on 127.0.0.1", file=sys.stderr)
        return EXIT_USAGE
    config_path = args.config or os.environ.get(CONFIG_ENV)
    if args.migrate:
        print_applied(asyncio.run(stores.migrate(settings)), settings)
    # Refuse here, once, with a clear message (schema behind, Redis evicting or
    # down) rather than in every worker; then say what is being served.
    asyncio.run(_check_stores(settings))
    for line in startup_summary(settings, config_path):
        print(f"meterway: {line}", flush=True)
    if args.workers == 1:
        _run_worker(settings, reuse_port=False, log_level=args.log_level)
        return 0
    return _run_workers(settings, args.workers, args.log_level)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


async def _check_stores(settings: Settings) -> None:
    opened = await stores.open_stores(settings, check_redis="full")
    await opened.close()


def startup_summary(settings: Settings, config_path: str | None) -> list[str]:
    """What this gateway serves from, printed at start: a wrong file or an empty ledger shows at once."""
    config = str(Path(config_path).resolve()) if config_path else "none (defaults and environment)"
    lines = [f"config:    {config}", f"ledger:    {stores.describe_database(settings)}",
             f"holds:     {stores.describe_holds(settings)}"]
    if not settings.providers:
        lines.append("providers: none configured: every model call is a 404 (add [providers.NAME] to the config)")
    for name, provider in settings.providers.items():
        lines.append(f"provider:  {name} -> {provider.base_url} ({len(provider.models)} models)")
    host = settings.listen.host
    shown = f"[{host}]" if ":" in host else host
    lines.append(f"listen:    http://{shown}:{settings.listen.port}")
    return lines


def _run_worker(settings: Settings, reuse_port: bool, log_level: str = "info") -> None:
    from gateway import logs
    from gateway.http.app import create_app

    # Here too: a spawned worker starts with no logging configured.
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs.install(settings)  # here, so a spawned worker's log lines are redacted too

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(create_app(settings), host=settings.listen.host, port=settings.listen.port, reuse_port=reuse_port,
                shutdown_timeout=settings.limits.shutdown_timeout_s, access_log=None,
                print=lambda msg: print(f"meterway [{os.getpid()}]: {msg}", flush=True))


def _run_workers(settings: Settings, count: int, log_level: str = "info") -> int:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_run_worker, args=(settings, True, log_level), daemon=False) for _ in range(count)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)
