"""A bot's cap survives a loss of Redis's data: its mirror is rebuilt from the cap row, and its in-flight holds
are re-registered, so two gateways never serve past the cap while Redis is flushed under them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import openai

from ledger.api_keys import SpendLimits
from ledger.bots import Bot
from ledger.caps import day_period
from ledger.holds import cap_account
from ledger.money import parse_usd
from tests.test_redis_loss import FEE_NUSD, held_in_flight, raw_held, redis_holds_of, slow, two_gateways


async def test_a_bots_daily_cap_holds_across_a_flushdb_under_load(fake_upstream: str) -> None:
    fits = 5
    async with two_gateways(fake_upstream) as (a, b, client):
        wallet_id = f"w{uuid.uuid4().hex[:10]}"
        await a.ops.create_wallet(wallet_id)
        await a.ops.credit(wallet_id, parse_usd("1"))
        bot = await a.state.book.create_bot(Bot("b-loss", wallet_id, "support", SpendLimits(day_nusd=fits * FEE_NUSD)))
        new, _ = await a.ops.create_key(wallet_id, "bot key", bot_id=bot.bot_id)
        gateways = (a, b)

        async def call(i: int, latency_ms: int) -> bool:
            try:
                await gateways[i % 2].client(new.secret).chat.completions.create(model="flat-fee",
                                                                                 messages=slow(latency_ms))
                return True
            except openai.APIStatusError as exc:
                assert exc.status_code == 402 and exc.code == "budget_exceeded", exc.response.text
                return False

        cap_id = f"bot:{bot.bot_id}:d:{day_period(datetime.now(UTC))}"
        holds = redis_holds_of(a)
        first = await held_in_flight(client, holds, cap_account(wallet_id, cap_id),
                                     [call(i, 2500) for i in range(10)], fits)
        await asyncio.sleep(0.3)  # the refused half of the first wave is answered
        await client.flushdb()  # the cap's mirror and its holds are gone
        second = [asyncio.ensure_future(call(i, 50)) for i in range(20)]
        results = await asyncio.gather(*first, *second)
        await a.settled_everything()
        await b.settled_everything()
        assert sum(results) == fits
        row = await a.state.book.spend_cap(cap_id)
        assert row is not None and row.remaining_nusd == 0
        assert await a.balance(wallet_id) == parse_usd("1") - fits * FEE_NUSD
        assert await raw_held(client, holds, cap_account(wallet_id, cap_id)) == (0, 0)
        await a.totals()
