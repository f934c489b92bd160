"""A gateway in the test's own event loop, in front of the fake upstream.

Built from the same pieces `meterway serve` uses; only the sockets are
ephemeral. `backend` is "embedded" (SQLite + in-process holds) or
"production" (Postgres + Redis).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
from aiohttp import web

from config.settings import Settings
from gateway.http.app import create_app
from gateway.http.state import STATE, GatewayState
from gateway.money.operations import Operations
from gateway.money.stores import migrate
from ledger.book import LedgerTotals, check_invariants
from ledger.money import parse_usd

MODELS = {
    "gpt-4o-mini": {"input_per_1m": "0.15", "cached_input_per_1m": "0.075", "output_per_1m": "0.60", "max_output_tokens": 16384},
    "gpt-3.5-turbo": {"input_per_1m": "0.50", "output_per_1m": "1.50", "max_output_tokens": 4096},
    "gpt-3.5-turbo-instruct": {"kind": "completion", "input_per_1m": "1.50", "output_per_1m": "2.00", "max_output_tokens": 4096},
    "text-embedding-3-small": {"kind": "embedding", "input_per_1m": "0.02"},
    "flat-fee": {"per_call": "0.01", "max_output_tokens": 64},
}
ADMIN_TOKEN = "test-admin-token-7f3c9a1e5b2d8064c1a9"  # 32+ characters: weaker ones are refused


def settings_for(upstream_url: str, store: dict[str, Any], **overrides: Any) -> Settings:
    limits = {"hold_ttl_s": 30, "upstream_total_timeout_s": 10, "body_bytes_max": 256 * 1024,
              "expiry_sweep_interval_s": 0.2} | overrides.pop("limits", {})
    # provider={"api_key": ...}: the operator's own key for the fake provider (BYOK tests tell it from the caller's).
    provider = {"base_url": upstream_url, "models": list(MODELS)} | overrides.pop("provider", {})
    return Settings(
        providers={"fake": provider},
        models=MODELS, limits=limits, **{"admin_token": ADMIN_TOKEN, **store, **overrides},
    )


@dataclass
class Harness:
    base_url: str
    app: web.Application
    runner: web.AppRunner
    wallets: list[str] = field(default_factory=list)

    @property
    def state(self) -> GatewayState:
        return self.app[STATE]

    @property
    def ops(self) -> Operations:
        return Operations(self.state.book, self.state.holds)

    async def funded_key(self, usd: str, *, bot: str | None = None) -> tuple[str, str]:
        """A new wallet with `usd` in it and a key on it: (wallet_id, secret)."""
        wallet_id = f"w{uuid.uuid4().hex[:10]}"
        await self.ops.create_wallet(wallet_id)
        self.wallets.append(wallet_id)
        if parse_usd(usd) > 0:
            await self.ops.credit(wallet_id, parse_usd(usd), memo="test funding")
        new, _ = await self.ops.create_key(wallet_id, "test", bot)
        return wallet_id, new.secret

    def client(self, secret: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key=secret, max_retries=0)

    async def balance(self, wallet_id: str) -> int:
        wallet = await self.state.book.wallet(wallet_id)
        assert wallet is not None
        return wallet.balance_nusd

    async def settled_everything(self) -> None:
        await self.state.settler.drain()

    async def assert_no_holds(self) -> None:
        await self.settled_everything()
        for wallet_id in self.wallets:
            holds = await self.state.holds.wallet(wallet_id)
            assert holds is None or (holds.held_nusd, holds.hold_count) == (0, 0), (wallet_id, holds)

    async def totals(self) -> LedgerTotals:
        totals = await self.state.book.totals()
        check_invariants(totals)
        return totals

    async def raw_post(self, path: str, body: bytes, secret: str | None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if secret:
            all_headers["Authorization"] = f"Bearer {secret}"
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.base_url}{path}", data=body, headers=all_headers) as response:
                return response.status, dict(response.headers), await response.json(content_type=None)

    async def get_json(self, path: str, secret: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {secret}"}) as response:
                return response.status, await response.json(content_type=None)

    async def usage(self, request_id: str, secret: str, wait_s: float = 5.0) -> dict[str, Any]:
        """GET /v1/usage/{id}, waiting for a settlement still in flight (cut streams)."""
        deadline = asyncio.get_running_loop().time() + wait_s
        while True:
            status, body = await self.get_json(f"/v1/usage/{request_id}", secret)
            if status == 200 or asyncio.get_running_loop().time() > deadline:
                assert status == 200, body
                return body
            await asyncio.sleep(0.05)


async def start_gateway(settings: Settings) -> Harness:
    # A gateway refuses a Postgres schema that is behind: migrating is the
    # operator's explicit step (`meterway migrate`), taken here as they would.
    await migrate(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return Harness(f"http://127.0.0.1:{port}", app, runner)
