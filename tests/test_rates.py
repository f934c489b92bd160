"""Rate limits on a key: one contract for the in-process and the Redis store, and the sliding minute's arithmetic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.metrics import Metrics
from gateway.money.traffic import Traffic
from ledger.key_rules import KeyRules, parse_cidrs
from ledger.rates import Admission, InProcessRates, Limit, RateStore, RateUnavailable, sliding, wait_s
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


def unchecked(metrics: Metrics, step: str) -> float:
    return metrics.registry.get_sample_value("meterway_rate_unchecked_total", {"step": step}) or 0.0


@contextlib.asynccontextmanager
async def fake_redis(answer: bytes | None) -> AsyncIterator[str]:
    """A server on a free port that answers every command with `answer` (a RESP reply), or never (None)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if answer is not None:  # every command is one RESP array: "*<argc>" at a line's start
                    commands = data.count(b"\r\n*") + data.startswith(b"*")
                    writer.write(answer * commands)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


@pytest.mark.parametrize("how", ["refused", "hung", "full"])
async def test_redis_down_is_an_error_value_and_the_request_is_admitted(how: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        if how == "refused":
            url = "redis://127.0.0.1:1/0"
        else:
            oom = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n"
            url = await stack.enter_async_context(fake_redis(None if how == "hung" else oom))
        client = aioredis.from_url(url, socket_connect_timeout=0.2)
        stack.push_async_callback(client.aclose)
        store = RedisRates(client, "mwt", 0.3)
        started = time.monotonic()
        with pytest.raises(RateUnavailable):
            await store.admit("k1", KeyRules(rpm=1), "r1", 60)
        assert time.monotonic() - started < 2  # within rate_timeout_s (and the connect timeout), never stuck
        metrics = Metrics.create()
        traffic = Traffic(store, 60, metrics)
        assert await traffic.admit("k1", KeyRules(rpm=1), "r1") is None  # not money: fail open, counted, logged
        await traffic.finish("k1", KeyRules(rpm=1), "r1", 5)  # does not raise
        assert unchecked(metrics, "admit") == 1 and unchecked(metrics, "finish") == 1


async def test_a_script_error_is_not_mistaken_for_an_outage() -> None:
    async with fake_redis(b"-ERR user_script:1: Script attempted to access a non local key\r\n") as url:
        client = aioredis.from_url(url)
        with pytest.raises(ResponseError):  # a bug says so: it is not admitted as "Redis is down"
            await RedisRates(client, "mwt", 0.5).admit("k1", KeyRules(rpm=1), "r1", 60)
        await client.aclose()


class _SlowRedisLike:
    """A store whose admission takes its slot and then waits for its reply, as a Redis script call does."""

    def __init__(self) -> None:
        self.inner = InProcessRates()
        self.reply = asyncio.Event()

    async def admit(self, key_id: str, rules: KeyRules, request_id: str, slot_ttl_s: float) -> Admission:
        admission = await self.inner.admit(key_id, rules, request_id, slot_ttl_s)
        await self.reply.wait()
        return admission

    async def finish(self, key_id: str, rules: KeyRules, request_id: str, tokens: int) -> None:
        await self.inner.finish(key_id, rules, request_id, tokens)


async def test_a_request_cancelled_while_admitted_gives_its_slot_back() -> None:
    store, rules = _SlowRedisLike(), KeyRules(parallel_max=1)
    traffic = Traffic(store, 900, Metrics.create())
    waiting = asyncio.ensure_future(traffic.admit("k1", rules, "r1"))
    await asyncio.sleep(0.01)
    waiting.cancel()  # a shutdown, while the script has run but its reply is not read
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert (await store.inner.admit("k1", rules, "r2", 900)).admitted  # not held for the slot's 900 s
