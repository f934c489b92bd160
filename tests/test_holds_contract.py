"""One contract for hold stores, run against the in-process and the Redis backend.

The Redis backend runs against a real Redis (conftest: skip if unreachable,
fail under CI=true), isolated by a random key prefix that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from ledger.holds import (
    NUSD_LIMIT,
    RESERVE_CAPS_MAX,
    ExpiredHold,
    HoldStore,
    HoldStoreUnavailable,
    ReserveResult,
    ReserveStatus,
    WalletHolds,
    cap_account,
)
from ledger.inprocess_holds import InProcessHolds
from ledger.redis_holds import RedisHolds

RESERVED, INSUFFICIENT, UNKNOWN = ReserveStatus.RESERVED, ReserveStatus.INSUFFICIENT, ReserveStatus.WALLET_UNKNOWN
LONG_TTL = 3600.0
REDIS_URL = os.environ.get("MW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def connect_redis() -> aioredis.Redis:
    """A client on the test Redis; skip if it is unreachable, fail under CI=true."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError, aioredis.TimeoutError) as exc:
        await client.aclose()
        reason = f"Redis not reachable at {REDIS_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
        pytest.skip(reason)
    return client


async def delete_prefix(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
    if keys:
        await client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
async def holds(request: pytest.FixtureRequest) -> AsyncIterator[HoldStore]:
    if request.param == "memory":
        store = InProcessHolds()
        yield store
        await store.close()
        return
    client = await connect_redis()
    prefix = f"mwt{uuid.uuid4().hex[:10]}"
    store = RedisHolds(client, prefix=prefix)
    try:
        yield store
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


@pytest.fixture
async def peer(holds: HoldStore) -> AsyncIterator[HoldStore]:
    """A second handle on the same store: for Redis, another client (its own
    connection pool), as another gateway process would have."""
    if isinstance(holds, RedisHolds):
        client = aioredis.from_url(REDIS_URL)  # its own connection pool
        store = RedisHolds(client, prefix=holds.prefix)
        yield store
        await client.aclose()
    else:
        yield holds


async def raw_holds(store: HoldStore, wallet_id: str) -> dict[str, int]:
    """White-box: the holds a store keeps for a wallet, after checking that its
    expiry indexes reference exactly those holds (no dangling/duplicate entries)."""
    if isinstance(store, InProcessHolds):
        w = store._wallets.get(wallet_id)
        if w is None:
            return {}
        live_local = {(hid, seq) for _, hid, seq in w.expiry_heap}
        live_global = {(hid, seq) for _, wid, hid, seq in store._expiry_heap if wid == wallet_id}
        for hid, h in w.holds.items():
            assert (hid, h.seq) in live_local and (hid, h.seq) in live_global, hid
        return {hid: h.amount_nusd for hid, h in w.holds.items()}
    assert isinstance(store, RedisHolds)
    client = store.client
    _, hkey, ekey = store.wallet_keys(wallet_id)
    amounts = {k.decode(): int(v) for k, v in (await client.hgetall(hkey)).items()}
    exp = {k.decode(): s for k, s in await client.zrange(ekey, 0, -1, withscores=True)}
    assert set(exp) == set(amounts), (exp, amounts)
    for hid, score in exp.items():
        assert await client.zscore(store.expiry_index_key, f"{wallet_id}\x1f{hid}") == score
    return amounts


async def global_index(store: RedisHolds) -> set[str]:
    return {m.decode() for m in await store.client.zrange(store.expiry_index_key, 0, -1)}


# --- basic contract -------------------------------------------------------------


async def test_unknown_wallet(holds: HoldStore) -> None:
    assert await holds.reserve("nobody", "h1", 10, LONG_TTL) == ReserveResult(UNKNOWN, 0)
    assert await holds.wallet("nobody") is None
    assert await holds.release("nobody", "h1") is False


async def test_reserve_insufficient_and_idempotent(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    assert await holds.reserve("w", "h1", 600, LONG_TTL) == ReserveResult(RESERVED, 400)
    assert await holds.reserve("w", "h2", 500, LONG_TTL) == ReserveResult(INSUFFICIENT, 400)
    # same hold id again: no double count, even with another amount
    assert await holds.reserve("w", "h1", 600, LONG_TTL) == ReserveResult(RESERVED, 400)
    assert await holds.reserve("w", "h1", 999, LONG_TTL) == ReserveResult(RESERVED, 400)
    assert await holds.wallet("w") == WalletHolds(1000, 1, 600, 1)
    assert await holds.reserve("w", "h3", 400, LONG_TTL) == ReserveResult(RESERVED, 0)
    assert await holds.reserve("w", "h4", 1, LONG_TTL) == ReserveResult(INSUFFICIENT, 0)
    assert await holds.wallet("w") == WalletHolds(1000, 1, 1000, 2)
    assert await raw_holds(holds, "w") == {"h1": 600, "h3": 400}


async def test_holds_are_per_wallet(holds: HoldStore) -> None:
    await holds.sync("a", 100, 1)
    await holds.sync("b", 100, 1)
    assert (await holds.reserve("a", "h", 100, LONG_TTL)).status is RESERVED
    assert (await holds.reserve("b", "h", 100, LONG_TTL)).status is RESERVED
    assert await holds.release("a", "h") is True
    assert await holds.wallet("b") == WalletHolds(100, 1, 100, 1)


async def test_settle_releases_and_updates_mirror(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    await holds.reserve("w", "h1", 300, LONG_TTL)
    await holds.reserve("w", "h2", 200, LONG_TTL)
    assert await holds.settle("w", "h1", 750, 2) is True  # ledger charged 250
    assert await holds.wallet("w") == WalletHolds(750, 2, 200, 1)
    assert await holds.settle("w", "h1", 750, 2) is False  # replay: nothing to release, same version
    assert await holds.wallet("w") == WalletHolds(750, 2, 200, 1)
    assert await holds.reserve("w", "h3", 550, LONG_TTL) == ReserveResult(RESERVED, 0)


async def test_stale_versions_are_ignored(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 5)
    await holds.reserve("w", "h1", 100, LONG_TTL)
    assert await holds.settle("w", "h1", 1, 4) is True  # hold released, stale mirror ignored
    assert await holds.wallet("w") == WalletHolds(1000, 5, 0, 0)
    await holds.sync("w", 2, 3)
    await holds.sync("w", 3, 5)  # same version is not newer
    assert await holds.wallet("w") == WalletHolds(1000, 5, 0, 0)
    await holds.sync("w", 900, 6)
    assert await holds.wallet("w") == WalletHolds(900, 6, 0, 0)


async def test_settle_without_mirror_creates_it(holds: HoldStore) -> None:
    assert await holds.settle("w", "h1", 500, 3) is False
    assert await holds.wallet("w") == WalletHolds(500, 3, 0, 0)


async def test_release_is_idempotent(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    await holds.reserve("w", "h1", 400, LONG_TTL)
    assert await holds.release("w", "h1") is True
    assert await holds.release("w", "h1") is False
    assert await holds.wallet("w") == WalletHolds(1000, 1, 0, 0)
    assert await raw_holds(holds, "w") == {}


async def test_sync_keeps_holds(holds: HoldStore) -> None:
    await holds.sync("w", 100, 1)
    await holds.reserve("w", "h1", 60, LONG_TTL)
    await holds.sync("w", 50, 2)  # the ledger debited elsewhere: available goes negative
    assert await holds.wallet("w") == WalletHolds(50, 2, 60, 1)
    assert await holds.reserve("w", "h2", 1, LONG_TTL) == ReserveResult(INSUFFICIENT, -10)


async def test_values_up_to_2_pow_53_stay_exact(holds: HoldStore) -> None:
    top = NUSD_LIMIT - 1
    await holds.sync("w", top, top)
    # 16 significant digits: Lua's tostring ("%.14g") would corrupt this
    assert await holds.reserve("w", "h1", 1_234_567_890_123_457, LONG_TTL) == ReserveResult(
        RESERVED, top - 1_234_567_890_123_457
    )
    assert await holds.reserve("w", "h2", top - 1_234_567_890_123_457, LONG_TTL) == ReserveResult(RESERVED, 0)
    assert await holds.reserve("w", "h3", 1, LONG_TTL) == ReserveResult(INSUFFICIENT, 0)
    assert await holds.wallet("w") == WalletHolds(top, top, top, 2)
    assert await holds.release("w", "h1") is True
    assert await holds.wallet("w") == WalletHolds(top, top, top - 1_234_567_890_123_457, 1)
    await holds.sync("w", -(NUSD_LIMIT - 1), top)  # same version: ignored


async def test_arguments_are_validated(holds: HoldStore) -> None:
    await holds.sync("w", 100, 1)
    for bad in (0, -1, NUSD_LIMIT, True, 1.0):
        with pytest.raises(ValueError):
            await holds.reserve("w", "h", bad, LONG_TTL)  # type: ignore[arg-type]
    for bad_ttl in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            await holds.reserve("w", "h", 1, bad_ttl)
    with pytest.raises(ValueError):
        await holds.sync("w", NUSD_LIMIT, 2)
    with pytest.raises(ValueError):
        await holds.settle("w", "h", 1, -1)
    with pytest.raises(ValueError):
        await holds.reserve("bad\x1fwallet", "h", 1, LONG_TTL)
    with pytest.raises(ValueError):
        await holds.expire_due(-1)
    assert await holds.expire_due(0) == []
    assert await holds.wallet("w") == WalletHolds(100, 1, 0, 0)


# --- expiry ---------------------------------------------------------------------


async def test_expired_holds_do_not_block_a_reservation(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    assert (await holds.reserve("w", "old", 1000, 0.2)).status is RESERVED
    assert (await holds.reserve("w", "new", 1, LONG_TTL)).status is INSUFFICIENT
    await asyncio.sleep(0.3)
    assert await holds.reserve("w", "new", 1000, LONG_TTL) == ReserveResult(RESERVED, 0)
    assert await raw_holds(holds, "w") == {"new": 1000}
    assert await holds.expire_due(100) == []  # already released by reserve, never twice
    assert await holds.release("w", "old") is False


async def test_many_expired_holds_do_not_block(holds: HoldStore) -> None:
    """More expired holds than one cleanup batch (16): reserve keeps releasing."""
    await holds.sync("w", 1000, 1)
    for i in range(40):
        assert (await holds.reserve("w", f"h{i}", 25, 0.05)).status is RESERVED
    await asyncio.sleep(0.15)
    assert await holds.reserve("w", "big", 1000, LONG_TTL) == ReserveResult(RESERVED, 0)
    assert await holds.wallet("w") == WalletHolds(1000, 1, 1000, 1)
    assert await holds.expire_due(100) == []


async def test_expired_hold_id_is_reserved_afresh(holds: HoldStore) -> None:
    await holds.sync("w", 100, 1)
    await holds.reserve("w", "h", 30, 0.05)
    await asyncio.sleep(0.15)
    assert await holds.reserve("w", "h", 70, LONG_TTL) == ReserveResult(RESERVED, 30)
    assert await raw_holds(holds, "w") == {"h": 70}
    assert await holds.expire_due(100) == []


async def test_expire_due_releases_due_holds_once(holds: HoldStore) -> None:
    await holds.sync("a", 1000, 1)
    await holds.sync("b", 1000, 1)
    await holds.reserve("a", "s1", 10, 0.05)
    await holds.reserve("a", "keep", 20, LONG_TTL)
    await holds.reserve("b", "s2", 30, 0.05)
    assert await holds.expire_due(100) == []  # nothing due yet
    await asyncio.sleep(0.15)
    expired = await holds.expire_due(100)
    assert sorted(expired, key=lambda e: e.hold_id) == [ExpiredHold("a", "s1", 10), ExpiredHold("b", "s2", 30)]
    assert await holds.expire_due(100) == []
    assert await holds.wallet("a") == WalletHolds(1000, 1, 20, 1)
    assert await holds.wallet("b") == WalletHolds(1000, 1, 0, 0)
    assert await holds.release("b", "s2") is False
    # a settle arriving after the sweep still updates the mirror
    assert await holds.settle("a", "s1", 990, 2) is False
    assert await holds.wallet("a") == WalletHolds(990, 2, 20, 1)


async def test_expire_due_respects_limit(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    for i in range(5):
        await holds.reserve("w", f"h{i}", 1, 0.05)
    await asyncio.sleep(0.15)
    assert len(await holds.expire_due(2)) == 2
    assert len(await holds.expire_due(2)) == 2
    assert len(await holds.expire_due(2)) == 1
    assert await holds.wallet("w") == WalletHolds(1000, 1, 0, 0)


async def test_concurrent_expire_due_releases_each_hold_once(holds: HoldStore, peer: HoldStore) -> None:
    expected = set()
    for w in ("a", "b", "c"):
        await holds.sync(w, 10_000, 1)
    # Taken first: a reserve releases its wallet's expired holds by design,
    # which would hide them from the sweepers under test.
    await holds.reserve("a", "live", 5, LONG_TTL)
    for w in ("a", "b", "c"):
        for i in range(40):
            assert (await holds.reserve(w, f"h{i}", 7, 0.05)).status is RESERVED
            expected.add(ExpiredHold(w, f"h{i}", 7))
    await asyncio.sleep(0.15)

    async def sweeper(store: HoldStore) -> list[ExpiredHold]:
        got: list[ExpiredHold] = []
        while batch := await store.expire_due(3):
            got.extend(batch)
        return got

    results = await asyncio.gather(*(sweeper(holds if i % 2 else peer) for i in range(12)))
    flat = [e for r in results for e in r]
    assert len(flat) == len(set(flat)) == len(expected)
    assert set(flat) == expected
    assert await holds.wallet("a") == WalletHolds(10_000, 1, 5, 1)
    for w in ("b", "c"):
        assert await holds.wallet(w) == WalletHolds(10_000, 1, 0, 0)
    if isinstance(holds, RedisHolds):
        assert await global_index(holds) == {"a\x1flive"}


async def test_memory_expiry_with_injected_clock() -> None:
    now = [100.0]
    store = InProcessHolds(clock=lambda: now[0])
    await store.sync("w", 100, 1)
    await store.reserve("w", "h1", 100, 10)
    now[0] = 109.999
    assert await store.expire_due(10) == []
    assert (await store.reserve("w", "h2", 1, 10)).status is INSUFFICIENT
    now[0] = 110.0  # expiry reached: due
    assert await store.reserve("w", "h2", 100, 10) == ReserveResult(RESERVED, 0)
    now[0] = 200.0
    assert await store.expire_due(10) == [ExpiredHold("w", "h2", 100)]
    # lazy heaps are compacted: churn does not grow them without bound
    for i in range(1000):
        await store.reserve("w", f"x{i}", 1, 10)
        await store.release("w", f"x{i}")
    assert len(store._expiry_heap) < 100 and len(store._wallets["w"].expiry_heap) < 100


# --- concurrency ----------------------------------------------------------------


async def test_concurrent_reserves_never_overdraw(holds: HoldStore, peer: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    results = await asyncio.gather(
        *(((holds if i % 2 else peer).reserve("w", f"h{i}", 10, LONG_TTL)) for i in range(200))
    )
    statuses = [r.status for r in results]
    assert statuses.count(RESERVED) == 100 and statuses.count(INSUFFICIENT) == 100
    assert all(r.available_nusd >= 0 for r in results)
    assert await holds.wallet("w") == WalletHolds(1000, 1, 1000, 100)
    assert sum((await raw_holds(holds, "w")).values()) == 1000


async def test_concurrent_settle_and_release_count_once(holds: HoldStore, peer: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    for i in range(50):
        await holds.reserve("w", f"h{i}", 10, LONG_TTL)
    ops = []
    for i in range(50):
        ops.append(holds.release("w", f"h{i}"))
        ops.append(peer.settle("w", f"h{i}", 1000 - i, 2 + i))
    released = await asyncio.gather(*ops)
    assert sum(released) == 50  # each hold released exactly once
    assert await holds.wallet("w") == WalletHolds(951, 51, 0, 0)


# --- backend specifics ----------------------------------------------------------


async def test_redis_unreachable_raises_hold_store_unavailable() -> None:
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    store = RedisHolds(client, prefix="unreachable", close_client=True)
    with pytest.raises(HoldStoreUnavailable) as info:
        await store.reserve("w", "h", 1, 1.0)
    assert isinstance(info.value.__cause__, aioredis.ConnectionError)
    with pytest.raises(HoldStoreUnavailable):
        await store.wallet("w")
    await store.close()


def test_prefix_must_not_break_the_hash_tag() -> None:
    with pytest.raises(ValueError):
        RedisHolds(aioredis.Redis(), prefix="a{b}")


def test_holds_module_does_not_import_redis() -> None:
    code = "import sys, ledger.holds; bad = [m for m in ('redis', 'aiohttp') if m in sys.modules]; assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))


def test_both_backends_satisfy_the_protocol() -> None:
    assert isinstance(InProcessHolds(), HoldStore)
    assert isinstance(RedisHolds(aioredis.Redis(), prefix="p"), HoldStore)


# --- stateful property test against a model --------------------------------------

WALLETS = ["w0", "w1", "w2"]
HOLD_IDS = [f"h{i}" for i in range(5)]
# A hold reserved with ttl 0 expires at its creation instant, so it is due for
# every later operation on either backend (Redis compares server ms with <=, the
# in-process store compares a monotonic clock with <=): the model stays
# deterministic without sleeping. Long holds never expire during a run.
TTL_NOW, TTL_LONG = 0.0, LONG_TTL

amounts = st.one_of(st.integers(1, 400), st.sampled_from([NUSD_LIMIT - 1, 1_234_567_890_123_457]))
balances = st.one_of(st.integers(-200, 2000), st.sampled_from([NUSD_LIMIT - 1, -(NUSD_LIMIT - 1)]))


class _ModelWallet:
    def __init__(self, balance: int, version: int) -> None:
        self.balance, self.version = balance, version
        self.holds: dict[str, tuple[int, bool]] = {}  # hold_id -> (amount, expired)

    @property
    def held(self) -> int:
        return sum(amount for amount, _ in self.holds.values())


def _run_machine(backend: str) -> None:
    loop = asyncio.new_event_loop()
    client: aioredis.Redis | None = None
    if backend == "redis":
        try:
            client = loop.run_until_complete(connect_redis())
        except BaseException:
            loop.close()
            raise

    class HoldsMachine(RuleBasedStateMachine):
        """Random sync/reserve/settle/release/expire sequences against a model.

        What must hold after every step (checked exactly against the model):
        - held == sum of the live holds' amounts, hold_count == their number,
          each hold id is stored once per wallet, and the expiry indexes
          reference exactly the live holds (so no hold is released twice and no
          released hold lingers); held >= 0.
        - The mirror's version never decreases and its balance changes only
          with a strictly newer version.
        - balance - held (available) may be negative, but only because a
          sync/settle lowered the balance below the holds (the ledger charged
          more than was held, or debited elsewhere). reserve never causes it:
          RESERVED requires available >= amount beforehand, so a reserve's
          available_nusd is >= 0 afterwards, and INSUFFICIENT changes nothing
          except releasing expired holds.
        - expired holds never count against a reservation and are released
          exactly once (by reserve's cleanup or by expire_due).
        """

        def __init__(self) -> None:
            super().__init__()
            self.model: dict[str, _ModelWallet] = {}
            if client is None:
                self.store: HoldStore = InProcessHolds()
            else:
                self.prefix = f"mwh{uuid.uuid4().hex[:10]}"
                self.store = RedisHolds(client, prefix=self.prefix)

        def run(self, coro):  # noqa: ANN001, ANN201
            return loop.run_until_complete(coro)

        def teardown(self) -> None:
            if client is not None:
                self.run(delete_prefix(client, self.prefix))

        @rule(w=st.sampled_from(WALLETS), balance=balances, version=st.integers(0, 12))
        def sync(self, w: str, balance: int, version: int) -> None:
            self.run(self.store.sync(w, balance, version))
            m = self.model.get(w)
            if m is None:
                self.model[w] = _ModelWallet(balance, version)
            elif version > m.version:
                m.balance, m.version = balance, version

        @rule(
            w=st.sampled_from(WALLETS),
            h=st.sampled_from(HOLD_IDS),
            amount=amounts,
            ttl=st.sampled_from([TTL_NOW, TTL_LONG]),
        )
        def reserve(self, w: str, h: str, amount: int, ttl: float) -> None:
            result = self.run(self.store.reserve(w, h, amount, ttl))
            m = self.model.get(w)
            if m is None:
                assert result == ReserveResult(UNKNOWN, 0)
                return
            # at most one expired hold per wallet exists (each reserve on the
            # wallet cleans the previous ones first), well under the batch of 16
            m.holds = {hid: v for hid, v in m.holds.items() if not v[1]}
            if h in m.holds:
                expected = ReserveResult(RESERVED, m.balance - m.held)
            elif m.balance - m.held < amount:
                expected = ReserveResult(INSUFFICIENT, m.balance - m.held)
            else:
                m.holds[h] = (amount, ttl == TTL_NOW)
                expected = ReserveResult(RESERVED, m.balance - m.held)
                assert expected.available_nusd >= 0
            assert result == expected

        @rule(w=st.sampled_from(WALLETS), h=st.sampled_from(HOLD_IDS), balance=balances, version=st.integers(0, 12))
        def settle(self, w: str, h: str, balance: int, version: int) -> None:
            released = self.run(self.store.settle(w, h, balance, version))
            m = self.model.get(w)
            if m is None:
                assert released is False
                self.model[w] = _ModelWallet(balance, version)
                return
            assert released is (m.holds.pop(h, None) is not None)
            if version > m.version:
                m.balance, m.version = balance, version

        @rule(w=st.sampled_from(WALLETS), h=st.sampled_from(HOLD_IDS))
        def release(self, w: str, h: str) -> None:
            released = self.run(self.store.release(w, h))
            m = self.model.get(w)
            assert released is (m is not None and m.holds.pop(h, None) is not None)

        @rule(limit=st.integers(1, 4))
        def expire(self, limit: int) -> None:
            got = self.run(self.store.expire_due(limit))
            due = {(w, h): amount for w, m in self.model.items() for h, (amount, exp) in m.holds.items() if exp}
            assert len(got) == min(limit, len(due))
            assert len({(e.wallet_id, e.hold_id) for e in got}) == len(got)
            for e in got:
                assert due[(e.wallet_id, e.hold_id)] == e.amount_nusd
                del self.model[e.wallet_id].holds[e.hold_id]

        @invariant()
        def store_matches_model(self) -> None:
            for w in WALLETS:
                m = self.model.get(w)
                got = self.run(self.store.wallet(w))
                if m is None:
                    assert got is None
                    continue
                assert got == WalletHolds(m.balance, m.version, m.held, len(m.holds))
                assert got.held_nusd >= 0
                assert self.run(raw_holds(self.store, w)) == {h: a for h, (a, _) in m.holds.items()}
            if isinstance(self.store, RedisHolds):
                members = self.run(global_index(self.store))
                assert members == {f"{w}\x1f{h}" for w, m in self.model.items() for h in m.holds}

    try:
        run_state_machine_as_test(
            HoldsMachine,
            settings=settings(
                max_examples=60,
                stateful_step_count=30,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        if client is not None:
            loop.run_until_complete(client.aclose())
        loop.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_random_operation_sequences_match_model(backend: str) -> None:
    _run_machine(backend)


async def test_redis_script_cache_loss_is_recovered_mid_pipeline() -> None:
    """After SCRIPT FLUSH (a Redis restart), batched calls reload their scripts and still run once each."""
    client = await connect_redis()
    prefix = f"mwt{uuid.uuid4().hex[:10]}"
    store = RedisHolds(client, prefix=prefix)
    try:
        await store.sync("w", 1_000, 1)
        await client.script_flush()
        results = await asyncio.gather(*(store.reserve("w", f"h{i}", 10, LONG_TTL) for i in range(150)))
        assert sum(r.status is RESERVED for r in results) == 100
        assert await store.wallet("w") == WalletHolds(1_000, 1, 1_000, 100)
        await client.script_flush()
        released = await asyncio.gather(*(store.release("w", f"h{i}") for i in range(150)))
        assert sum(released) == 100
        assert await store.wallet("w") == WalletHolds(1_000, 1, 0, 0)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


async def test_a_redis_that_never_answers_fails_within_the_deadline() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)  # accept and read, never reply: a hung server

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    store = RedisHolds(client, prefix="hung", timeout_s=0.3)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(HoldStoreUnavailable):
            await store.reserve("w", "h", 10, LONG_TTL)
        with pytest.raises(HoldStoreUnavailable):
            await store.wallet("w")
        assert asyncio.get_running_loop().time() - started < 2.0
    finally:
        await client.aclose()
        server.close()


async def test_settle_many_is_settle_for_each_in_one_call(holds: HoldStore) -> None:
    from ledger.holds import HoldSettlement

    await holds.sync("w", 1_000, 1)
    await holds.sync("v", 500, 1)
    for i in range(5):
        assert (await holds.reserve("w", f"h{i}", 10, LONG_TTL)).status is RESERVED
    assert (await holds.reserve("v", "x", 50, LONG_TTL)).status is RESERVED
    released = await holds.settle_many([
        HoldSettlement("w", "h0", 990, 2),
        HoldSettlement("w", "h1", 980, 3),
        HoldSettlement("w", "gone", 970, 4),  # no such hold: the mirror still moves on
        HoldSettlement("v", "x", 450, 2),
        HoldSettlement("w", "h2", 960, 1),  # stale version: the hold goes, the balance stays
    ])
    assert released == [True, True, False, True, True]
    assert await holds.wallet("w") == WalletHolds(970, 4, 20, 2)
    assert await holds.wallet("v") == WalletHolds(450, 2, 0, 0)
    assert await holds.settle_many([]) == []


# --- caps: a wallet and its spend caps held in one atomic step -------------------
# A cap is an account of its own ("<wallet>\x1e<cap>"), under the wallet's hash
# tag in Redis, so one script decides for all of them.

DAY, MONTH = "bot:b1:d:2026-11-24", "bot:b1:m:2026-11"


async def mirrored(holds: HoldStore, wallet: int, day: int, month: int) -> None:
    await holds.sync("w", wallet, 1)
    await holds.sync(cap_account("w", DAY), day, 1)
    await holds.sync(cap_account("w", MONTH), month, 1)


async def test_a_hold_is_taken_on_the_wallet_and_every_cap(holds: HoldStore) -> None:
    await mirrored(holds, 1000, 300, 500)
    assert await holds.reserve("w", "h1", 200, LONG_TTL, (DAY, MONTH)) == ReserveResult(RESERVED, 800)
    assert await raw_holds(holds, "w") == {"h1": 200}
    assert await raw_holds(holds, cap_account("w", DAY)) == {"h1": 200}
    assert await holds.wallet(cap_account("w", MONTH)) == WalletHolds(500, 1, 200, 1)
    # The same id again counts nothing twice, on any account.
    assert await holds.reserve("w", "h1", 200, LONG_TTL, (DAY, MONTH)) == ReserveResult(RESERVED, 800)
    assert await holds.wallet(cap_account("w", DAY)) == WalletHolds(300, 1, 200, 1)


async def test_the_refusing_cap_is_named_and_nothing_is_taken(holds: HoldStore) -> None:
    await mirrored(holds, 1000, 300, 250)
    assert await holds.reserve("w", "h1", 200, LONG_TTL, (DAY, MONTH)) == ReserveResult(RESERVED, 800)
    assert await holds.reserve("w", "h2", 150, LONG_TTL, (DAY, MONTH)) == ReserveResult(INSUFFICIENT, 100, DAY)
    assert await holds.reserve("w", "h2", 90, LONG_TTL, (DAY, MONTH)) == ReserveResult(INSUFFICIENT, 50, MONTH)
    for account in ("w", cap_account("w", DAY), cap_account("w", MONTH)):
        assert await raw_holds(holds, account) == {"h1": 200}, account
    # The wallet refuses last, and is named as None.
    assert await holds.reserve("w", "h3", 900, LONG_TTL) == ReserveResult(INSUFFICIENT, 800)


async def test_an_unmirrored_cap_is_named_and_nothing_is_taken(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    await holds.sync(cap_account("w", DAY), 300, 1)
    assert await holds.reserve("w", "h1", 10, LONG_TTL, (DAY, MONTH)) == ReserveResult(UNKNOWN, 0, MONTH)
    assert await raw_holds(holds, "w") == {} and await raw_holds(holds, cap_account("w", DAY)) == {}
    assert await holds.reserve("nobody", "h1", 10, LONG_TTL, (DAY,)) == ReserveResult(UNKNOWN, 0)


async def test_each_account_releases_and_settles_on_its_own(holds: HoldStore) -> None:
    await mirrored(holds, 1000, 300, 500)
    await holds.reserve("w", "h1", 200, LONG_TTL, (DAY, MONTH))
    assert await holds.release(cap_account("w", DAY), "h1") is True
    assert await holds.settle(cap_account("w", MONTH), "h1", 380, 2) is True  # spent 120 of the month
    assert await holds.wallet(cap_account("w", MONTH)) == WalletHolds(380, 2, 0, 0)
    assert await holds.release("w", "h1") is True
    assert await holds.wallet("w") == WalletHolds(1000, 1, 0, 0)


async def test_caps_expire_with_their_hold(holds: HoldStore) -> None:
    await mirrored(holds, 1000, 300, 500)
    await holds.reserve("w", "h1", 200, 0.0, (DAY,))
    await asyncio.sleep(0.01)
    expired = await holds.expire_due(10)
    assert sorted(h.wallet_id for h in expired) == sorted(["w", cap_account("w", DAY)])
    assert await holds.wallet(cap_account("w", DAY)) == WalletHolds(300, 1, 0, 0)


async def test_concurrent_requests_never_pass_a_cap(holds: HoldStore, peer: HoldStore) -> None:
    await mirrored(holds, 10**9, 1000, 10**6)
    stores = [holds, peer]
    results = await asyncio.gather(*(
        stores[i % 2].reserve("w", f"h{i}", 100, LONG_TTL, (DAY, MONTH)) for i in range(60)))
    assert sum(r.status is RESERVED for r in results) == 10
    assert {r.cap_id for r in results if r.status is INSUFFICIENT} == {DAY}
    assert (await holds.wallet("w")) == WalletHolds(10**9, 1, 1000, 10)


async def test_bad_caps_are_refused_before_anything_is_sent(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    for caps in ((DAY, DAY), ("a\x1eb",), ("",), ("x\x1fy",), tuple(f"c{i}" for i in range(RESERVE_CAPS_MAX + 1))):
        with pytest.raises(ValueError):
            await holds.reserve("w", "h1", 10, LONG_TTL, caps)
    with pytest.raises(ValueError):
        await holds.reserve(cap_account("w", DAY), "h1", 10, LONG_TTL, (MONTH,))  # caps belong to a wallet
    assert await holds.wallet("w") == WalletHolds(1000, 1, 0, 0)


async def test_redis_keeps_a_cap_under_its_wallets_hash_tag() -> None:
    client = await connect_redis()
    holds = RedisHolds(client, prefix="mwt-layout")
    wallet_keys, cap_keys = holds.wallet_keys("w"), holds.wallet_keys(cap_account("w", DAY))
    for key in (*wallet_keys, *cap_keys):
        assert "{w:w}" in key, key
    assert not set(wallet_keys) & set(cap_keys)
    await client.aclose()
