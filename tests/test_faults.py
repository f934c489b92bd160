"""Faults in the stores: Redis losing its data or going away, Postgres dropping connections."""

from __future__ import annotations

import asyncpg
import openai
import pytest

from config.pricing import TokenUsage, cost_nusd
from ledger.money import parse_usd
from tests.conftest import PG_ADMIN_DSN

pytestmark = pytest.mark.parametrize("backend", ["production"])


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_redis_losing_every_key_loses_no_money(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    await client.chat.completions.create(model="flat-fee", messages=user("x"))
    redis = gw.state.holds.client
    prefix = gw.state.holds.prefix
    async for redis_key in redis.scan_iter(match=f"{prefix}:*"):
        await redis.delete(redis_key)  # as if Redis restarted without persistence
    await client.chat.completions.create(model="flat-fee", messages=user("x"))
    assert await gw.balance(wallet) == parse_usd("1") - 2 * parse_usd("0.01")
    mirror = await gw.state.holds.wallet(wallet)
    assert mirror is not None and mirror.balance_nusd == await gw.balance(wallet)


async def test_redis_unreachable_refuses_with_503_and_charges_nothing(gateway_factory) -> None:
    healthy = await gateway_factory()
    wallet, key = await healthy.funded_key("1")
    # Same Postgres schema, but its Redis is a closed port.
    broken = await gateway_factory(redis_url="redis://127.0.0.1:9/0")
    for stream in (False, True):
        with pytest.raises(openai.APIStatusError) as caught:
            await broken.client(key).chat.completions.create(model="flat-fee", messages=user("x"), stream=stream)
        assert caught.value.status_code == 503
        assert caught.value.response.json()["error"]["code"] == "holds_unavailable"
    assert await healthy.balance(wallet) == parse_usd("1")
    broken.wallets.clear()  # its hold store is unreachable by design: nothing to check there


async def test_postgres_dropping_connections_mid_stream_still_settles_once(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=user("FAKE:prompt_tokens=10 FAKE:completion_tokens=6 FAKE:chunk_delay_ms=50"),
        stream=True, stream_options={"include_usage": True})
    chunks = []
    async for chunk in stream:
        chunks.append(chunk)
        if len(chunks) == 2:
            admin = await asyncpg.connect(PG_ADMIN_DSN)
            try:
                killed = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
            finally:
                await admin.close()
            assert killed >= 1
    final = chunks[-1]
    expected = cost_nusd(gw.state.routes["gpt-4o-mini"].price, TokenUsage(10, 6))
    assert final.usage is not None and final.usage.completion_tokens == 6
    assert await gw.balance(wallet) == parse_usd("1") - expected
    assert (await gw.state.book.totals()).usage_charged_nusd == expected
