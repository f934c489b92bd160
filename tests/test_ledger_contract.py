"""One contract for the book, run against SQLite and Postgres alike."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    Book,
    SettleOutcome,
    Transfer,
    TransferKind,
    TransferOutcome,
    UsageRecord,
    check_invariants,
)
from ledger.errors import AccountExists, IdempotencyConflict, InsufficientFunds, UnknownAccount


def usage(request_id: str, wallet_id: str, cost_nusd: int, held_nusd: int = 0) -> UsageRecord:
    return UsageRecord(
        request_id=request_id, key_id="k1", wallet_id=wallet_id, bot=None, model="m", upstream="u",
        endpoint="chat", status="ok", usage_source="upstream", prompt_tokens=10, cached_tokens=0,
        completion_tokens=5, input_per_1m_nusd=1, cached_input_per_1m_nusd=1, output_per_1m_nusd=1,
        per_call_nusd=0, cost_nusd=cost_nusd, held_nusd=held_nusd, latency_ms=1.0, upstream_latency_ms=0.5,
    )


def deposit(transfer_id: str, wallet_id: str, amount_nusd: int) -> Transfer:
    return Transfer(transfer_id, FUNDING_ACCOUNT, wallet_id, amount_nusd, TransferKind.ADJUSTMENT, memo="test")


async def test_wallet_lifecycle_and_credit_is_idempotent(book: Book) -> None:
    await book.create_wallet("acme", "Acme Inc")
    with pytest.raises(AccountExists):
        await book.create_wallet("acme")
    assert await book.transfer(deposit("c1", "acme", 1_000)) is TransferOutcome.CREATED
    assert await book.transfer(deposit("c1", "acme", 1_000)) is TransferOutcome.EXISTS
    with pytest.raises(IdempotencyConflict):
        await book.transfer(deposit("c1", "acme", 999))
    wallet = await book.wallet("acme")
    assert wallet is not None and wallet.balance_nusd == 1_000 and wallet.version == 1
    history = await book.transfers_of("acme")
    assert [t.transfer.transfer_id for t in history] == ["c1"]
    check_invariants(await book.totals())


async def test_overdraft_is_refused_by_the_database(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("c1", "w", 100))
    with pytest.raises(InsufficientFunds):
        await book.transfer(Transfer("t2", "w", REVENUE_ACCOUNT, 101, TransferKind.ADJUSTMENT))
    with pytest.raises(UnknownAccount):
        await book.transfer(deposit("c3", "nobody", 5))
    assert (await book.wallet("w")).balance_nusd == 100
    check_invariants(await book.totals())


async def test_settle_charges_once_and_replays(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("c1", "w", 1_000))
    first = await book.settle_batch([usage("r1", "w", 300), usage("r2", "w", 0)])
    assert [r.outcome for r in first] == [SettleOutcome.SETTLED, SettleOutcome.SETTLED]
    assert first[0].charged_nusd == 300 and first[0].balance_nusd == 700
    again = await book.settle_batch([usage("r1", "w", 300)])
    assert again[0].outcome is SettleOutcome.REPLAY and again[0].charged_nusd == 300
    conflict = await book.settle_batch([usage("r1", "w", 301)])
    assert conflict[0].outcome is SettleOutcome.CONFLICT
    assert (await book.wallet("w")).balance_nusd == 700
    settled = await book.usage("r1")
    assert settled is not None and settled.charged_nusd == 300 and settled.record == usage("r1", "w", 300)
    zero = await book.usage("r2")
    assert zero is not None and zero.charged_nusd == 0
    check_invariants(await book.totals())


async def test_cost_above_balance_is_a_recorded_shortfall(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("c1", "w", 100))
    [result] = await book.settle_batch([usage("r1", "w", 250, held_nusd=100)])
    assert (result.charged_nusd, result.shortfall_nusd, result.balance_nusd) == (100, 150, 0)
    totals = await book.totals()
    assert totals.usage_shortfall_nusd == 150 and totals.revenue_nusd == 250
    check_invariants(totals)


async def test_unknown_wallet_settles_nothing(book: Book) -> None:
    [result] = await book.settle_batch([usage("r1", "ghost", 5)])
    assert result.outcome is SettleOutcome.UNKNOWN_WALLET
    assert await book.usage("r1") is None


async def test_concurrent_settles_of_one_request_charge_once(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("c1", "w", 10_000))
    results = await asyncio.gather(*(book.settle_batch([usage("same", "w", 700)]) for _ in range(8)))
    outcomes = sorted(r[0].outcome.value for r in results)
    assert outcomes.count("settled") == 1 and outcomes.count("replay") == 7
    assert (await book.wallet("w")).balance_nusd == 9_300
    check_invariants(await book.totals())


async def test_keys_are_stored_by_hash_and_revocable(book: Book) -> None:
    from ledger.book import ApiKeyRecord

    await book.create_wallet("w")
    key = ApiKeyRecord("key_1", "h" * 64, "mw-abcd", "w", "ci", "bot-7")
    await book.create_key(key)
    found = await book.key_by_hash("h" * 64)
    assert found is not None and dataclasses.replace(found, created_at=None) == key
    assert [k.key_id for k in await book.list_keys("w")] == ["key_1"]
    assert await book.revoke_key("key_1") is True
    assert await book.revoke_key("key_1") is False
    assert (await book.key_by_hash("h" * 64)).active is False
    with pytest.raises(UnknownAccount):
        await book.create_key(ApiKeyRecord("key_2", "g" * 64, "mw-x", "nowallet", None, None))
