"""Spend controls across two real `meterway serve` processes sharing Postgres and Redis.

- 200 requests race against a bot's daily cap that fits 10: exactly 10 are
  served, every other gets budget_exceeded, and the cap row says the cap is spent.
- A cap changed through one process is enforced by the other within a second,
  although its key cache would keep the old key for a minute: Redis notices.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import openai

from config.settings import WalletSettings
from gateway.money.wallet_owners import WalletOwners
from ledger.api_keys import SpendLimits
from ledger.book import check_invariants
from ledger.bots import Bot
from ledger.caps import day_period
from ledger.holds import cap_account
from tests.test_multiprocess import FLAT_FEE_NUSD, clients, cluster, serving

HI = [{"role": "user", "content": "x"}]


def long_key_cache(config: Path) -> None:
    """Keys cached for a minute: only a notice can make a change reach the other process sooner."""
    config.write_text(config.read_text() + "\n[limits]\nkey_cache_ttl_s = 60\n")


async def test_two_processes_serve_exactly_what_a_daily_cap_allows(tmp_path: Path, fake_upstream: str) -> None:
    fits = 10
    async with cluster(tmp_path, fake_upstream) as (env, config, ops):
        book = ops.book
        async with serving(env, config) as ports:
            await ops.create_wallet("bots")
            await ops.credit("bots", 1000 * FLAT_FEE_NUSD)
            await book.create_bot(Bot("b-race", "bots", "support", SpendLimits(day_nusd=fits * FLAT_FEE_NUSD)))  # type: ignore[attr-defined]
            new, _ = await ops.create_key("bots", "bot key", bot_id="b-race")
            both = clients(ports, new.secret)

            async def one(i: int) -> bool:
                try:
                    await both[i % 2].chat.completions.create(model="flat-fee", messages=HI)
                    return True
                except openai.APIStatusError as exc:
                    assert exc.status_code == 402 and exc.code == "budget_exceeded", exc
                    assert "bot's daily spending cap" in exc.message
                    return False

            served = await asyncio.gather(*(one(i) for i in range(200)))
        assert sum(served) == fits
        cap_id = f"bot:b-race:d:{day_period(datetime.now(UTC))}"
        row = await book.spend_cap(cap_id)  # type: ignore[attr-defined]
        assert row is not None and row.remaining_nusd == 0
        assert (await book.wallet("bots")).balance_nusd == (1000 - fits) * FLAT_FEE_NUSD
        mirror = await ops.holds.wallet(cap_account("bots", cap_id))
        assert mirror is not None and mirror.held_nusd == 0
        check_invariants(await book.totals())


async def test_a_cap_change_reaches_the_other_process_within_a_second(tmp_path: Path, fake_upstream: str) -> None:
    async with cluster(tmp_path, fake_upstream) as (env, config, ops):
        long_key_cache(config)
        async with serving(env, config) as ports:
            owners = WalletOwners(ops.book, ops.holds, WalletSettings())  # type: ignore[arg-type]
            _, _, management = await owners.create_org("team", "Team", "Olive")
            await ops.credit("team", 1000 * FLAT_FEE_NUSD)
            bot = await ops.book.create_bot(Bot("b-live", "team", "support", SpendLimits()))  # type: ignore[attr-defined]
            new, _ = await ops.create_key("team", "bot key", bot_id=bot.bot_id)
            first, second = clients(ports, new.secret)
            for client in (first, second):  # both processes now cache the key, with no cap
                await client.chat.completions.create(model="flat-fee", messages=HI)
            async with aiohttp.ClientSession() as session:
                async with session.patch(f"http://127.0.0.1:{ports[0]}/api/bots/{bot.bot_id}",
                                         json={"daily_cap": "0"},
                                         headers={"Authorization": f"Bearer {management.secret}"}) as response:
                    assert response.status == 200, await response.text()
            changed = time.monotonic()
            while True:
                try:
                    await second.chat.completions.create(model="flat-fee", messages=HI)
                except openai.APIStatusError as exc:
                    assert exc.status_code == 402 and exc.code == "budget_exceeded", exc
                    break
                assert time.monotonic() - changed < 1.0, "the other process still serves past the new cap"
                await asyncio.sleep(0.02)
            seen_after_s = time.monotonic() - changed
    assert seen_after_s < 1.0
