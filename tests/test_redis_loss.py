"""Redis losing its data under load must not forget the holds in flight (issue 6, item 5).

Two gateways (in-process harnesses, as `meterway serve` builds them) share one
Postgres schema and one Redis prefix on a private Redis db, so FLUSHDB there
touches nobody else's keys. Slow requests (the fake upstream's latency
directive) keep holds open while Redis is flushed; what the wallet served must
never exceed what it had, and no hold may be left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import openai
import redis.asyncio as aioredis

from gateway.money.operations import Operations
from ledger.book import check_invariants
from ledger.money import parse_usd
from ledger.postgres_book import PostgresBook
from ledger.redis_holds import RedisHolds
from tests.conftest import missing_service, pg_schema
from tests.gateway_harness import Harness, settings_for, start_gateway
from tests.test_multiprocess import free_port, fund, serve, stop, wait_healthy, write_config

# A private db: FLUSHDB here cannot hurt the suite's other tests (db 0).
LOSS_REDIS_URL = os.environ.get("MW_TEST_REDIS_LOSS_URL", "redis://127.0.0.1:6379/15")
FEE_NUSD = parse_usd("0.01")  # flat-fee: held and charged exactly this per call
# Small intervals, so a test waits out the grace in about a second.
LIMITS = {"redis_heartbeat_interval_s": 0.05, "redis_timeout_s": 1.0, "redis_recovery_grace_s": 1.3}


def slow(latency_ms: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"FAKE:latency_ms={latency_ms}"}]


async def loss_redis() -> aioredis.Redis:
    """A client of the Redis these tests may flush (its own database)."""
    client = aioredis.from_url(LOSS_REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        missing_service(f"Redis not reachable at {LOSS_REDIS_URL}: {exc}")
    return client


async def established_deployment() -> tuple[aioredis.Redis, str]:
    """A client of the loss-test Redis and a fresh prefix whose generation is old: no grace to wait at start."""
    client = await loss_redis()
    prefix = f"mwl{uuid.uuid4().hex[:10]}"
    await client.hset(f"{prefix}:generation", mapping={"id": "before", "born_ms": 0})
    return client, prefix


@contextlib.asynccontextmanager
async def two_gateways(upstream_url: str) -> AsyncIterator[tuple[Harness, Harness, aioredis.Redis]]:
    client, prefix = await established_deployment()
    started: list[Harness] = []
    try:
        async with pg_schema() as dsn:
            store = {"database_url": dsn, "redis_url": LOSS_REDIS_URL, "redis_prefix": prefix}
            try:
                for _ in range(2):
                    started.append(await start_gateway(settings_for(upstream_url, store, limits=LIMITS)))
                yield started[0], started[1], client
            finally:
                for harness in started:
                    await harness.runner.cleanup()
    finally:
        await client.flushdb()
        await client.aclose()


async def call(harness: Harness, secret: str, latency_ms: int) -> bool:
    """True if served, False if refused for want of funds (402); anything else fails the test."""
    try:
        await harness.client(secret).chat.completions.create(model="flat-fee", messages=slow(latency_ms))
        return True
    except openai.APIStatusError as exc:
        assert exc.status_code == 402, (exc.status_code, exc.response.text)
        return False


async def wait_for(predicate: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def raw_held(client: aioredis.Redis, holds: RedisHolds, wallet_id: str) -> tuple[int, int]:
    """What Redis itself holds for the wallet: (held, hold count), whether or not it is mirrored."""
    wkey, hkey, _ = holds.wallet_keys(wallet_id)
    held = await client.hget(wkey, "held")
    return int(held or 0), await client.hlen(hkey)


async def assert_exact_and_clean(a: Harness, b: Harness, client: aioredis.Redis, wallet_id: str,
                                 deposit_nusd: int, served: int) -> None:
    await a.settled_everything()
    await b.settled_everything()
    totals = await a.totals()  # the ledger's invariants hold
    # Overspend is exactly 0: nothing served beyond the deposit, no shortfall.
    assert served * FEE_NUSD <= deposit_nusd, (served, deposit_nusd)
    assert totals.usage_shortfall_nusd == 0, totals
    assert totals.revenue_nusd == served * FEE_NUSD, (totals, served)
    assert await a.balance(wallet_id) == deposit_nusd - served * FEE_NUSD
    # No hold leaks: Redis holds nothing for the wallet, and its expiry index is empty.
    holds = redis_holds_of(a)
    assert await raw_held(client, holds, wallet_id) == (0, 0)
    assert await client.zcard(holds.expiry_index_key) == 0
    for harness in (a, b):
        assert redis_holds_of(harness).open_hold_count == 0


async def test_flushdb_under_load_overspends_nothing(fake_upstream: str) -> None:
    """Both gateways hold the whole wallet in slow requests; Redis is flushed; a second wave on
    both must be refused until those requests settle. Before the fix the rebuilt mirror knew no
    holds and the second wave was served too (the wallet paid for 2x its balance)."""
    async with two_gateways(fake_upstream) as (a, b, client):
        wallet_id, secret, deposit = await funded(a, "0.06")
        gateways = (a, b)
        holds = redis_holds_of(a)
        first = await held_in_flight(client, holds, wallet_id, [call(gateways[i % 2], secret, 3000) for i in range(12)], 6)
        await asyncio.sleep(0.3)  # the refused half of the first wave is answered
        await client.flushdb()  # as a Redis restart without persistence would
        # The second wave, on both gateways, while the first is still running upstream.
        second = [asyncio.ensure_future(call(gateways[i % 2], secret, 50)) for i in range(24)]
        results = await asyncio.gather(*first, *second)
        served = sum(results)
        assert sum(await asyncio.gather(*first)) == 6
        await assert_exact_and_clean(a, b, client, wallet_id, deposit, served)
        assert served == 6


async def test_continuous_load_with_repeated_flushes_overspends_nothing(fake_upstream: str) -> None:
    """Many clients keep both gateways busy with slow calls; Redis is flushed twice mid-flight."""
    async with two_gateways(fake_upstream) as (a, b, client):
        wallet_id, secret, deposit = await funded(a, "0.2")
        gateways = (a, b)
        stop = asyncio.Event()

        async def worker(i: int) -> int:
            served = 0
            while not stop.is_set():
                served += await call(gateways[i % 2], secret, 400 + 37 * (i % 7))
                await asyncio.sleep(0.01)
            return served

        workers = [asyncio.ensure_future(worker(i)) for i in range(16)]
        for _ in range(2):
            await asyncio.sleep(0.7)
            await client.flushdb()
        await asyncio.sleep(2.5)
        stop.set()
        served = sum(await asyncio.gather(*workers))
        assert served > 0
        await assert_exact_and_clean(a, b, client, wallet_id, deposit, served)


async def test_an_idle_gateway_re_registers_its_holds_from_the_heartbeat(fake_upstream: str) -> None:
    """Only the generation key and the wallet's keys vanish, while gateway B reserves nothing:
    its heartbeat notices and re-registers its in-flight holds, so A cannot spend them again."""
    async with two_gateways(fake_upstream) as (a, b, client):
        wallet_id, secret, deposit = await funded(a, "0.04")
        holds_b = redis_holds_of(b)
        in_flight = await held_in_flight(client, holds_b, wallet_id, [call(b, secret, 2500) for _ in range(4)], 4)
        before = await client.hget(holds_b.generation_key, "id")
        # The generation and the wallet's mirror, holds and expiry index vanish; nothing else.
        await client.delete(holds_b.generation_key, *holds_b.wallet_keys(wallet_id), holds_b.expiry_index_key)
        # B is idle: only its heartbeat can notice. It joins a new generation and re-registers.
        await wait_for(lambda: _held_count_is(client, holds_b, wallet_id, 4), timeout_s=5)
        assert await client.hget(holds_b.generation_key, "id") not in (None, before)
        assert await raw_held(client, holds_b, wallet_id) == (4 * FEE_NUSD, 4)
        # A's reserve waits out the grace, re-reads the book (nothing settled yet), and sees B's holds.
        late = [asyncio.ensure_future(call(a, secret, 10)) for _ in range(6)]
        assert sum(await asyncio.gather(*late)) == 0
        assert sum(await asyncio.gather(*in_flight)) == 4
        await assert_exact_and_clean(a, b, client, wallet_id, deposit, 4)


async def test_settling_holds_the_loss_removed_leaves_held_at_zero(fake_upstream: str) -> None:
    """Settlements of holds Redis no longer has neither drive held negative nor leave holds behind,
    and the mirror is rebuilt from the settled (balance, version)."""
    async with two_gateways(fake_upstream) as (a, b, client):
        wallet_id, secret, deposit = await funded(a, "0.05")
        holds = redis_holds_of(a)
        in_flight = await held_in_flight(client, holds, wallet_id, [call(a, secret, 800) for _ in range(3)], 3)
        await client.flushdb()
        # Nobody reserves: the requests finish and settle into an empty Redis (or after the heartbeat
        # re-registered them); either way held ends at 0 and the mirror matches the book.
        assert sum(await asyncio.gather(*in_flight)) == 3
        await assert_exact_and_clean(a, b, client, wallet_id, deposit, 3)
        mirror = await holds.wallet(wallet_id)
        assert mirror is None or (mirror.balance_nusd, mirror.held_nusd) == (deposit - 3 * FEE_NUSD, 0)


def redis_holds_of(harness: Harness) -> RedisHolds:
    holds = harness.state.holds
    assert isinstance(holds, RedisHolds)
    return holds


async def funded(harness: Harness, usd: str) -> tuple[str, str, int]:
    """A wallet holding `usd`, a key on it, and the deposit in nUSD."""
    wallet_id, secret = await harness.funded_key(usd)
    return wallet_id, secret, parse_usd(usd)


async def held_in_flight(client: aioredis.Redis, holds: RedisHolds, wallet_id: str,
                         calls: list[Coroutine[Any, Any, bool]], held: int) -> list[asyncio.Future[bool]]:
    """Start the calls; return them once Redis holds `held` of them for the wallet."""
    started = [asyncio.ensure_future(c) for c in calls]
    await wait_for(lambda: _held_count_is(client, holds, wallet_id, held))
    return started


async def _held_count_is(client: aioredis.Redis, holds: RedisHolds, wallet_id: str, count: int) -> bool:
    return (await raw_held(client, holds, wallet_id))[1] == count


async def test_the_store_re_registers_only_open_holds_with_their_remaining_ttl() -> None:
    """RedisHolds alone: after a FLUSHDB, settled/released/expired holds stay gone, open ones come
    back (without a mirror: the next reserve re-reads the book), and a reserve waits out the grace."""
    client = await loss_redis()
    store = RedisHolds(client, prefix=f"mwl{uuid.uuid4().hex[:10]}", grace_s=0.4, timeout_s=1.0)
    try:
        await store.sync("w", 1_000, 1)
        for i in range(4):
            assert (await store.reserve("w", f"h{i}", 100, 30)).status.value == "reserved"
        assert (await store.reserve("w", "short", 100, 0.05)).status.value == "reserved"
        assert store.open_hold_count == 5
        await client.flushdb()
        assert await store.settle("w", "h0", 900, 2) is False  # gone with the data: nothing released
        assert await store.release("w", "h1") is False
        await asyncio.sleep(0.1)  # "short" expires
        assert await store.check_generation() is True  # the heartbeat: lost, so recover
        assert store.open_hold_count == 2
        # h2, h3 are back, with the mirror the settle rebuilt: held 200, never negative.
        assert await raw_held(client, store, "w") == (200, 2)
        mirror = await store.wallet("w")
        assert mirror is not None and (mirror.balance_nusd, mirror.version, mirror.held_nusd) == (900, 2, 200)
        _, _, ekey = store.wallet_keys("w")
        ttls = [score for _, score in await client.zrange(ekey, 0, -1, withscores=True)]
        now_ms = (await client.time())[0] * 1000
        assert all(now_ms + 25_000 < ttl <= now_ms + 31_000 for ttl in ttls), ttls  # their remaining TTL
        assert await store.check_generation() is False  # nothing changed since
        started = asyncio.get_running_loop().time()
        result = await store.reserve("w", "new", 700, 30)  # the generation is young: waits, then decides
        assert asyncio.get_running_loop().time() - started >= 0.2
        assert (result.status.value, result.available_nusd) == ("reserved", 0)
        assert (await store.reserve("w", "more", 1, 30)).status.value == "insufficient"
    finally:
        await client.flushdb()
        await client.aclose()


async def test_two_serve_processes_survive_a_flushdb_without_overspending(tmp_path, fake_upstream: str) -> None:
    """The same under `meterway serve` itself: two real processes, Redis flushed while both hold money."""
    client, prefix = await established_deployment()
    processes = []
    try:
        async with pg_schema() as dsn:
            book = await PostgresBook.connect(dsn)
            await book.migrate()
            holds = RedisHolds(client, prefix=prefix)
            env = {**os.environ, "DATABASE_URL": dsn, "REDIS_URL": LOSS_REDIS_URL, "MW_REDIS_PREFIX": prefix,
                   "MW_SETTLE_JOURNAL_PATH": str(tmp_path / "journal.jsonl"),
                   **{f"MW_LIMITS__{name.upper()}": str(value) for name, value in LIMITS.items()}}
            try:
                ops = Operations(book, holds)
                config = write_config(tmp_path, fake_upstream)
                ports = [free_port(), free_port()]
                processes = [serve(env, config, port) for port in ports]
                for port, process in zip(ports, processes, strict=True):
                    await wait_healthy(f"http://127.0.0.1:{port}", process)
                secret = await fund(ops, "flushed", 5 * FEE_NUSD)
                clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=secret, max_retries=0)
                           for p in ports]

                async def one(i: int, latency_ms: int) -> bool:
                    try:
                        await clients[i % 2].chat.completions.create(model="flat-fee", messages=slow(latency_ms))
                        return True
                    except openai.APIStatusError as exc:
                        assert exc.status_code == 402, (exc.status_code, exc.response.text)
                        return False

                first = [asyncio.ensure_future(one(i, 3000)) for i in range(10)]
                await wait_for(lambda: _held_count_is(client, holds, "flushed", 5))
                await client.flushdb()
                second = [asyncio.ensure_future(one(i, 20)) for i in range(20)]
                served = sum(await asyncio.gather(*first, *second))
            finally:
                for process in processes:
                    stop(process)
            totals = await book.totals()
            wallet = await book.wallet("flushed")
            await book.close()
        check_invariants(totals)
        assert served == 5, served
        assert totals.usage_shortfall_nusd == 0 and totals.revenue_nusd == 5 * FEE_NUSD, totals
        assert wallet is not None and wallet.balance_nusd == 0
        assert await raw_held(client, holds, "flushed") == (0, 0)
    finally:
        await client.flushdb()
        await client.aclose()
