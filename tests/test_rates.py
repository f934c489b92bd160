"""Rate limits on a key: one contract for the in-process and the Redis store, and the sliding minute's arithmetic."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.money.traffic import Traffic
from ledger.key_rules import KeyRules, parse_cidrs
from ledger.rates import InProcessRates, Limit, RateStore, RateUnavailable, sliding, wait_s
from ledger.redis_rates import RedisRates
from tests.test_holds_contract import connect_redis

REDIS_URL = os.environ.get("MW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(params=["memory", "redis"])
async def rates(request: pytest.FixtureRequest) -> AsyncIterator[RateStore]:
    if request.param == "memory":
        yield InProcessRates()
        return
    client = await connect_redis()
    prefix = f"mwt{uuid.uuid4().hex[:10]}"
    yield RedisRates(client, prefix, 2.0)
    async for key in client.scan_iter(match=f"{prefix}:*"):
        await client.delete(key)
    await client.aclose()


async def test_requests_per_minute(rates: RateStore) -> None:
    rules = KeyRules(rpm=3)
    admitted = [await rates.admit("k1", rules, f"r{i}", 60) for i in range(5)]
    assert [a.admitted for a in admitted] == [True, True, True, False, False]
    refused = admitted[3]
    assert refused.refused_by is Limit.REQUESTS and refused.retry_after_s >= 1 and refused.requests >= 3
    assert (await rates.admit("k2", rules, "r0", 60)).admitted  # another key has its own count


async def test_tokens_per_minute_are_counted_as_requests_end(rates: RateStore) -> None:
    rules = KeyRules(tpm=100)
    assert (await rates.admit("k1", rules, "r1", 60)).admitted
    assert (await rates.admit("k1", rules, "r2", 60)).admitted  # nothing used yet
    await rates.finish("k1", rules, "r1", 60)
    assert (await rates.admit("k1", rules, "r3", 60)).admitted
    await rates.finish("k1", rules, "r2", 60)  # 120 used: past the limit by what was in flight
    refused = await rates.admit("k1", rules, "r4", 60)
    assert not refused.admitted and refused.refused_by is Limit.TOKENS and refused.tokens >= 100


async def test_parallel_requests_take_and_free_a_slot(rates: RateStore) -> None:
    rules = KeyRules(parallel_max=2)
    assert (await rates.admit("k1", rules, "r1", 60)).admitted
    assert (await rates.admit("k1", rules, "r2", 60)).admitted
    refused = await rates.admit("k1", rules, "r3", 60)
    assert refused.refused_by is Limit.PARALLEL and refused.retry_after_s == 1
    await rates.finish("k1", rules, "r1", 0)
    assert (await rates.admit("k1", rules, "r3", 60)).admitted


async def test_a_crashed_processs_slot_expires(rates: RateStore) -> None:
    rules = KeyRules(parallel_max=1)
    assert (await rates.admit("k1", rules, "r1", 0.05)).admitted  # never finished
    assert not (await rates.admit("k1", rules, "r2", 60)).admitted
    await asyncio.sleep(0.1)
    assert (await rates.admit("k1", rules, "r2", 60)).admitted


async def test_concurrent_admissions_never_pass_the_limit(rates: RateStore) -> None:
    rules = KeyRules(rpm=10, parallel_max=50)
    results = await asyncio.gather(*(rates.admit("k1", rules, f"r{i}", 60) for i in range(40)))
    assert sum(a.admitted for a in results) == 10


def test_the_sliding_minute() -> None:
    assert sliding(60, 10, 0.5) == 40
    # 40 in the window, limit 30: the previous minute's weight must fall by 10 of its 60: 10 s.
    assert wait_s(60, 10, 0.5, 30) == pytest.approx(10.0)
    # This minute alone is past the limit: wait for its end, then for its weight to fall.
    assert wait_s(0, 40, 0.5, 30) == pytest.approx(30 + 15)
    assert wait_s(0, 0, 0.0, 1) == 1.0


def test_cidrs_are_normalised_and_checked() -> None:
    assert parse_cidrs(["10.1.2.3/8", "2001:db8::1/32", "192.0.2.7"]) == ("10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32")
    for bad in (["10.0.0.0/33"], ["nonsense"], []):
        with pytest.raises(ValueError):
            parse_cidrs(bad)
    rules = KeyRules(ip_allow=parse_cidrs(["10.0.0.0/8", "2001:db8::/32"]))
    assert rules.allows("10.9.8.7") and rules.allows("::ffff:10.0.0.1") and rules.allows("2001:db8::5")
    assert not rules.allows("11.0.0.1") and not rules.allows(None) and not rules.allows("garbage")


async def test_redis_down_is_an_error_value_and_the_request_is_admitted() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    store = RedisRates(dead, "mwt", 0.5)
    with pytest.raises(RateUnavailable):
        await store.admit("k1", KeyRules(rpm=1), "r1", 60)
    traffic = Traffic(store, 60)
    assert await traffic.admit("k1", KeyRules(rpm=1), "r1") is None  # not money: fail open, logged
    await traffic.finish("k1", KeyRules(rpm=1), "r1", 5)  # does not raise
    await dead.aclose()
