"""The hold store's caps: a wallet and its spend caps held in one atomic step.

Run against both backends (the `holds` and `peer` fixtures of the contract
suite). A cap is an account of its own ("<wallet>\\x1e<cap>"), under the
wallet's hash tag in Redis, so one script decides for all of them.
"""

from __future__ import annotations

import asyncio

import pytest

from ledger.holds import RESERVE_CAPS_MAX, HoldStore, ReserveResult, ReserveStatus, WalletHolds, cap_account
from ledger.redis_holds import RedisHolds
from tests.test_holds_contract import LONG_TTL, connect_redis, holds, peer, raw_holds  # noqa: F401 (fixtures)

RESERVED, INSUFFICIENT, UNKNOWN = ReserveStatus.RESERVED, ReserveStatus.INSUFFICIENT, ReserveStatus.WALLET_UNKNOWN
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
