"""`meterway demo`: a gateway a newcomer can call at once, with nothing else running.

In one process: the fake provider (OpenAI's shapes, no key, no network), an
embedded SQLite ledger (``--db``, default ./meterway-demo.sqlite3, kept between
runs), a wallet ``demo`` funded once with a fixed transfer id (so a re-run never
credits it twice), a new key, and the gateway. It prints the key, a ready
``curl`` line and a Python SDK snippet. The production path (`meterway serve`)
is untouched: the demo ignores --config, DATABASE_URL and REDIS_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import signal
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import Settings
from gateway import logs
from ledger.errors import AccountExists
from ledger.money import format_usd, parse_usd

DEMO_WALLET = "demo"
DEMO_FUNDS_USD = "5.00"
# A fixed idempotency key: the demo wallet is funded once, however often the demo runs.
DEMO_FUNDING_ID = "demo-funding-1"
DEMO_MODEL = "gpt-4o-mini"
# The prices of config/example.toml, so what the demo charges is what the quick start shows.
DEMO_MODELS: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"input_per_1m": "0.15", "cached_input_per_1m": "0.075", "output_per_1m": "0.60",
                    "max_output_tokens": 16384},
    "gpt-4o": {"input_per_1m": "2.50", "cached_input_per_1m": "1.25", "output_per_1m": "10.00",
               "max_output_tokens": 16384},
    "gpt-3.5-turbo-instruct": {"kind": "completion", "input_per_1m": "1.50", "output_per_1m": "2.00",
                               "max_output_tokens": 4096},
    "text-embedding-3-small": {"kind": "embedding", "input_per_1m": "0.02"},
}


def demo_settings(args: argparse.Namespace, upstream_url: str, admin_token: str, metrics_token: str) -> Settings:
    settings = Settings(
        listen={"host": args.host, "port": args.port},
        sqlite_path=str(Path(args.db).resolve()),
        providers={"fake": {"base_url": upstream_url, "models": list(DEMO_MODELS)}},
        models=DEMO_MODELS, admin_token=admin_token, metrics_token=metrics_token,
    )
    # The environment may point at Postgres/Redis; the demo is embedded whatever it says.
    return settings.model_copy(update={"database_url": None, "redis_url": None})


def run_demo(args: argparse.Namespace) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    # Imported here only: the fake provider is a test double, never part of `serve`.
    from fakes.openai import FakeConfig, start_fake_upstream
    from gateway.http.app import create_app
    from gateway.money.operations import Operations
    from gateway.money.stores import open_stores

    stopped = _stop_signal()  # before anything is printed: a Ctrl-C right after the banner stops cleanly
    fake, upstream_url = await start_fake_upstream(FakeConfig(models=tuple(DEMO_MODELS)))
    # Fresh tokens each run: /admin and /metrics are never open, whatever --host says.
    admin_token, metrics_token = secrets.token_hex(24), secrets.token_hex(24)
    settings = demo_settings(args, upstream_url, admin_token, metrics_token)
    logs.install(settings)  # the demo's tokens and keys never reach a log line either
    stores = await open_stores(settings)  # embedded: migrates the demo file
    runner: web.AppRunner | None = None
    try:
        ops = Operations(stores.book, stores.holds)
        balance = await _funded_wallet(ops)
        new_key, _ = await ops.create_key(DEMO_WALLET, "demo", None)
        runner = web.AppRunner(create_app(settings, stores), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.listen.host, settings.listen.port).start()
        port = runner.addresses[0][1]
        host = settings.listen.host
        base_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
        print(_banner(settings, upstream_url, base_url, balance, new_key.secret, admin_token, metrics_token), flush=True)
        await stopped.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await stores.close()
        await fake.cleanup()
    return 0


async def _funded_wallet(ops: Any) -> int:
    try:
        await ops.create_wallet(DEMO_WALLET, "Demo")
    except AccountExists:
        pass  # a re-run: same wallet, same ledger file
    _, wallet = await ops.credit(DEMO_WALLET, parse_usd(DEMO_FUNDS_USD), DEMO_FUNDING_ID, "demo funding")
    balance: int = wallet.balance_nusd
    return balance


def _stop_signal() -> asyncio.Event:
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)
    return stopped


def curl_line(base_url: str, secret: str) -> str:
    body = json.dumps({"model": DEMO_MODEL, "messages": [{"role": "user", "content": "Hello"}]})
    return (f"curl -sS -i {base_url}/v1/chat/completions -H {shlex.quote('Authorization: Bearer ' + secret)} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")


def python_snippet(base_url: str, secret: str) -> str:
    return "\n".join([
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{base_url}/v1", api_key="{secret}")',
        "raw = client.chat.completions.with_raw_response.create(",
        f'    model="{DEMO_MODEL}", messages=[{{"role": "user", "content": "Hello"}}])',
        'print(raw.headers["x-usage-cost"], raw.parse().choices[0].message.content)',
    ])


def _banner(settings: Settings, upstream_url: str, base_url: str, balance: int, secret: str, admin_token: str,
            metrics_token: str) -> str:
    return f"""
Meterway demo: a working gateway, nothing else to run.
  gateway:  {base_url}
  provider: the built-in fake at {upstream_url} (OpenAI's answer shapes; models {", ".join(DEMO_MODELS)})
  ledger:   SQLite {settings.sqlite_path} (kept between runs; delete it to start over)
  wallet:   {DEMO_WALLET}, balance {format_usd(balance)} USD (funded once, by transfer {DEMO_FUNDING_ID})
  key:      {secret}
  admin:    {admin_token} (this run only; Authorization: Bearer ... on /admin/*)
  metrics:  {metrics_token} (this run only; Authorization: Bearer ... on /metrics)

Call it (the cost is in the X-Usage-Cost header):

{curl_line(base_url, secret)}

Or with the OpenAI SDK (pip install openai):

{python_snippet(base_url, secret)}

See the wallet: curl -sS {base_url}/admin/wallets/{DEMO_WALLET} -H 'Authorization: Bearer {admin_token}'
Ctrl-C stops the demo. For real providers and production, see the README (meterway serve).
"""

