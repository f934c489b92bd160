"""The hold stores' checks at the money boundary, on both backends.

Two kinds, as in TigerBeetle: a bad argument is refused with ValueError before
anything changes (an explicit raise, so it holds under ``python -O`` too), and
a broken invariant (a corrupted mirror, a reply outside the scripts' contract)
is an AssertionError, never a value guessed from it. Expected failures (no
money, no mirror, Redis unreachable) stay values and HoldStoreUnavailable: the
contract suite (test_holds_contract.py) covers those.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from ledger.holds import (
    NUSD_LIMIT,
    TTL_MAX_S,
    HoldSettlement,
    HoldStore,
    ReserveResult,
    ReserveStatus,
    WalletHolds,
)
from ledger.inprocess_holds import InProcessHolds
from ledger.redis_batching import ScriptBatcher
from ledger.redis_holds import RedisHolds, _released, _reserve_code, _reserve_result
from ledger.redis_scripts import RedisKeys, ReserveReply
from tests.test_holds_contract import connect_redis, delete_prefix

LONG_TTL = 3600.0
RESERVED, INSUFFICIENT = ReserveStatus.RESERVED, ReserveStatus.INSUFFICIENT


@pytest.fixture(params=["memory", "redis"])
async def holds(request: pytest.FixtureRequest) -> AsyncIterator[HoldStore]:
    if request.param == "memory":
        yield InProcessHolds()
        return
    client = await connect_redis()
    prefix = f"mwa{uuid.uuid4().hex[:10]}"
    try:
        yield RedisHolds(client, prefix=prefix)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


# --- bad arguments: ValueError, and nothing changes ------------------------------

BAD_AMOUNTS = [0, -1, NUSD_LIMIT, NUSD_LIMIT + 1, True, 1.0, "1", None]
BAD_TTLS = [-0.1, TTL_MAX_S + 1, float("nan"), float("inf"), True, "1", None]
BAD_WALLET_IDS = ["", "a\x1fb", 1, None]
BAD_HOLD_IDS = ["", 1, None]
BAD_BALANCES = [NUSD_LIMIT, -NUSD_LIMIT, True, 1.5, "1", None]
BAD_VERSIONS = [-1, NUSD_LIMIT, True, 1.0, None]


def bad_calls() -> list[tuple[str, str, Any]]:
    """(test id, method, args) for every argument each method checks."""
    calls: list[tuple[str, str, Any]] = []
    calls += [(f"reserve-amount-{v!r}", "reserve", ("w", "new", v, LONG_TTL)) for v in BAD_AMOUNTS]
    calls += [(f"reserve-ttl-{v!r}", "reserve", ("w", "new", 10, v)) for v in BAD_TTLS]
    calls += [(f"reserve-wallet-{v!r}", "reserve", (v, "new", 10, LONG_TTL)) for v in BAD_WALLET_IDS]
    calls += [(f"reserve-hold-{v!r}", "reserve", ("w", v, 10, LONG_TTL)) for v in BAD_HOLD_IDS]
    calls += [(f"settle-balance-{v!r}", "settle", ("w", "h", v, 9)) for v in BAD_BALANCES]
    calls += [(f"settle-version-{v!r}", "settle", ("w", "h", 1, v)) for v in BAD_VERSIONS]
    calls += [(f"settle-wallet-{v!r}", "settle", (v, "h", 1, 9)) for v in BAD_WALLET_IDS]
    calls += [(f"settle-hold-{v!r}", "settle", ("w", v, 1, 9)) for v in BAD_HOLD_IDS]
    calls += [(f"sync-balance-{v!r}", "sync", ("w", v, 9)) for v in BAD_BALANCES]
    calls += [(f"sync-version-{v!r}", "sync", ("w", 1, v)) for v in BAD_VERSIONS]
    calls += [(f"sync-wallet-{v!r}", "sync", (v, 1, 9)) for v in BAD_WALLET_IDS]
    calls += [(f"release-wallet-{v!r}", "release", (v, "h")) for v in BAD_WALLET_IDS]
    calls += [(f"release-hold-{v!r}", "release", ("w", v)) for v in BAD_HOLD_IDS]
    calls += [(f"expire_due-limit-{v!r}", "expire_due", (v,)) for v in (-1, True, 1.0, None)]
    return calls


@pytest.mark.parametrize(("method", "args"), [c[1:] for c in bad_calls()], ids=[c[0] for c in bad_calls()])
async def test_a_bad_argument_is_refused_and_changes_nothing(holds: HoldStore, method: str, args: Any) -> None:
    await holds.sync("w", 1000, 1)
    assert await holds.reserve("w", "h", 100, LONG_TTL) == ReserveResult(RESERVED, 900)
    with pytest.raises(ValueError):
        await getattr(holds, method)(*args)
    assert await holds.wallet("w") == WalletHolds(1000, 1, 100, 1)
    assert await holds.reserve("w", "h", 100, LONG_TTL) == ReserveResult(RESERVED, 900)  # still there


async def test_settle_many_refuses_the_whole_batch_for_one_bad_item(holds: HoldStore) -> None:
    await holds.sync("w", 1000, 1)
    await holds.reserve("w", "h", 100, LONG_TTL)
    with pytest.raises(ValueError):
        await holds.settle_many([HoldSettlement("w", "h", 900, 2), HoldSettlement("w", "x", NUSD_LIMIT, 3)])
    assert await holds.wallet("w") == WalletHolds(1000, 1, 100, 1)  # the good item was not applied either
    assert await holds.settle_many([]) == []


async def test_the_limits_themselves_are_accepted(holds: HoldStore) -> None:
    top = NUSD_LIMIT - 1
    await holds.sync("w", top, 0)
    assert await holds.reserve("w", "big", top, TTL_MAX_S) == ReserveResult(RESERVED, 0)
    assert await holds.reserve("w", "now", 1, 0.0) == ReserveResult(INSUFFICIENT, 0)
    assert await holds.settle("w", "big", -top, 1) is True
    assert await holds.wallet("w") == WalletHolds(-top, 1, 0, 0)
    assert await holds.expire_due(0) == []


async def test_results_are_bools_and_decisions_are_consistent(holds: HoldStore) -> None:
    await holds.sync("w", 100, 1)
    refused = await holds.reserve("w", "too-much", 101, LONG_TTL)
    assert refused == ReserveResult(INSUFFICIENT, 100) and refused.available_nusd < 101
    assert await holds.wallet("w") == WalletHolds(100, 1, 0, 0)  # a refusal takes nothing
    assert await holds.reserve("w", "h", 60, LONG_TTL) == ReserveResult(RESERVED, 40)
    assert await holds.release("w", "h") is True and await holds.release("w", "h") is False
    assert await holds.settle("w", "h", 90, 2) is False
    # The ledger charged more than was held: a repeat of a held id answers with what is left, below 0.
    await holds.reserve("w", "h2", 50, LONG_TTL)
    await holds.sync("w", 10, 3)
    assert await holds.reserve("w", "h2", 50, LONG_TTL) == ReserveResult(RESERVED, -40)


# --- broken invariants: AssertionError ---------------------------------------------


async def test_in_process_held_total_out_of_step_with_its_holds_is_caught() -> None:
    store = InProcessHolds()
    await store.sync("w", 1000, 1)
    await store.reserve("w", "a", 10, LONG_TTL)
    await store.reserve("w", "b", 20, LONG_TTL)
    store._wallets["w"].held_nusd = 5  # corrupt: the holds sum to 30
    with pytest.raises(AssertionError):
        await store.release("w", "a")  # 5 - 10 < 0 while a hold remains


async def test_in_process_held_total_left_after_the_last_hold_is_caught() -> None:
    store = InProcessHolds()
    await store.sync("w", 1000, 1)
    await store.reserve("w", "a", 10, LONG_TTL)
    store._wallets["w"].held_nusd = 11  # corrupt: one nUSD held by no hold
    with pytest.raises(AssertionError):
        await store.settle("w", "a", 990, 2)


async def redis_store() -> tuple[RedisHolds, aioredis.Redis, str]:
    client = await connect_redis()
    prefix = f"mwa{uuid.uuid4().hex[:10]}"
    return RedisHolds(client, prefix=prefix), client, prefix


async def test_redis_replies_outside_the_contract_are_caught() -> None:
    store, client, prefix = await redis_store()
    try:
        await store.sync("w", 1000, 1)
        await store.reserve("w", "h", 10, LONG_TTL)
        wkey, hkey, _ = store.wallet_keys("w")
        await client.hset(wkey, "held", "0")  # corrupt: a hold exists but nothing is held
        with pytest.raises(AssertionError):
            await store.reserve("w", "h", 10, LONG_TTL)  # RESERVED (repeat) with held 0
        with pytest.raises(AssertionError):
            await store.wallet("w")  # a hold counted in no held total
        await client.hset(wkey, mapping={"held": "-1", "balance": "0"})
        with pytest.raises(AssertionError):
            await store.reserve("w", "other", 5, LONG_TTL)  # INSUFFICIENT with a negative held
        await client.hset(wkey, mapping={"held": "10", "balance": str(NUSD_LIMIT + 10)})
        with pytest.raises(AssertionError):
            await store.reserve("w", "h", 10, LONG_TTL)  # a balance no check_balance() let in
        await store.reserve("v", "x", 1, LONG_TTL)  # (no mirror: WALLET_UNKNOWN, nothing taken)
        await store.sync("v", 100, 1)
        await store.reserve("v", "due", 7, 0.0)
        await client.hset(store.wallet_keys("v")[1], "due", str(NUSD_LIMIT))  # corrupt: an amount past the limit
        with pytest.raises(AssertionError):
            await store.expire_due(10)
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


def test_reserve_reply_shapes() -> None:
    assert _reserve_code([1, b"100", b"10"]) == ReserveReply.RESERVED
    assert _reserve_code([0, 1]) == ReserveReply.WALLET_UNKNOWN
    assert _reserve_code([4, 250]) == ReserveReply.GRACE_WAIT
    for bad in ([7], [1, b"100"], [0], [0, 2], [2, b"1", b"0", 3], [2], [3, 1], [4, 0], [4]):
        with pytest.raises(AssertionError):
            _reserve_code(bad)
    assert _reserve_result(ReserveReply.INSUFFICIENT, [2, b"100", b"10", 1], 91) == ReserveResult(INSUFFICIENT, 90)
    with pytest.raises(AssertionError):  # "insufficient" although 90 would cover 90
        _reserve_result(ReserveReply.INSUFFICIENT, [2, b"100", b"10", 1], 90)
    assert _released(1) is True and _released(b"0") is False
    with pytest.raises(AssertionError):
        _released(2)


def test_redis_construction_checks() -> None:
    with pytest.raises(ValueError):
        RedisKeys("a{b")
    with pytest.raises(AssertionError):
        RedisKeys("p").wallet("a\x1fb")  # the store checks ids first; the key layout insists
    with pytest.raises(AssertionError):
        ScriptBatcher(aioredis.Redis(), 0, 1.0)
