"""Multi-leg postings, payees, reversals: worked money examples, on SQLite and Postgres alike."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest

from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    SHORTFALL_ACCOUNT,
    Book,
    Leg,
    Payee,
    Posting,
    Reversal,
    SettleOutcome,
    TransferKind,
    TransferOutcome,
    UsageRecord,
    check_invariants,
)
from ledger.errors import IdempotencyConflict, InsufficientFunds, UnknownAccount
from tests.test_ledger_contract import deposit, usage


async def balances(book: Book, *wallets: str) -> list[int]:
    return [(await book.wallet(w)).balance_nusd for w in wallets]


async def test_a_consumer_pays_a_creator_and_a_platform_fee_in_one_posting(book: Book) -> None:
    for wallet in ("consumer", "creator"):
        await book.create_wallet(wallet)
    await book.transfer(deposit("d1", "consumer", 1_000))
    posting = Posting("buy-1", TransferKind.PAYMENT,
                      (Leg("consumer", "creator", 900), Leg("consumer", REVENUE_ACCOUNT, 100)), memo="a prompt pack")
    assert await book.post(posting) is TransferOutcome.CREATED
    assert await book.post(posting) is TransferOutcome.EXISTS
    assert await balances(book, "consumer", "creator") == [0, 900]
    with pytest.raises(IdempotencyConflict):
        await book.post(dataclasses.replace(posting, legs=(Leg("consumer", "creator", 1_000),)))
    with pytest.raises(IdempotencyConflict):
        await book.post(dataclasses.replace(posting, legs=(*posting.legs, Leg(FUNDING_ACCOUNT, "creator", 1))))
    [record] = await book.transfers_of("creator")
    assert (record.transfer.transfer_id, record.posting_id, record.transfer.memo) == ("buy-1", "buy-1", "a prompt pack")
    assert [t.transfer.transfer_id for t in await book.transfers_of(REVENUE_ACCOUNT)] == ["buy-1:1"]
    assert await balances(book, "consumer", "creator") == [0, 900]
    totals = await book.totals()
    assert totals.revenue_nusd == 100
    check_invariants(totals)


async def test_an_overdraft_in_any_leg_rolls_back_the_whole_posting(book: Book) -> None:
    for wallet in ("a", "b", "creator"):
        await book.create_wallet(wallet)
    await book.transfer(deposit("d1", "a", 100))
    with pytest.raises(InsufficientFunds):  # the second leg overdraws a
        await book.post(Posting("p1", TransferKind.PAYMENT, (Leg("a", "creator", 60), Leg("a", REVENUE_ACCOUNT, 50))))
    with pytest.raises(InsufficientFunds):  # legs apply in order: b is empty when it pays
        await book.post(Posting("p2", TransferKind.PAYMENT, (Leg("b", "creator", 5), Leg("a", "b", 5))))
    with pytest.raises(UnknownAccount):
        await book.post(Posting("p3", TransferKind.PAYMENT, (Leg("a", "creator", 5), Leg("a", "ghost", 5))))
    assert await balances(book, "a", "b", "creator") == [100, 0, 0]
    assert await book.transfers_of("creator") == []
    # Nothing of p1 was kept, so its id is still free, for a posting that fits.
    ok = Posting("p1", TransferKind.PAYMENT, (Leg("a", "b", 5), Leg("b", "creator", 5)))
    assert await book.post(ok) is TransferOutcome.CREATED
    assert await balances(book, "a", "b", "creator") == [95, 0, 5]
    check_invariants(await book.totals())


async def test_payees_are_filled_from_the_wallet_first_then_from_the_shortfall(book: Book) -> None:
    await book.create_wallet("w")
    await book.create_wallet("byok")  # who receives the fee
    await book.transfer(deposit("d1", "w", 90))
    item = dataclasses.replace(usage("r1", "w", 100), payees=(Payee(REVENUE_ACCOUNT, 80), Payee("byok", 20)))
    [result] = await book.settle_batch([item])
    assert (result.outcome, result.charged_nusd, result.shortfall_nusd, result.balance_nusd) == (SettleOutcome.SETTLED, 90, 10, 0)
    assert result.version == 3  # the deposit and two wallet legs
    legs = {t.transfer.transfer_id: (t.transfer.debit_account, t.transfer.credit_account, t.transfer.amount_nusd,
                                     t.transfer.kind) for t in await book.transfers_of("byok")}
    assert legs == {"r1:1": ("w", "byok", 10, TransferKind.USAGE),
                    "r1:1:shortfall": (SHORTFALL_ACCOUNT, "byok", 10, TransferKind.SHORTFALL)}
    assert [t.transfer.transfer_id for t in await book.transfers_of(REVENUE_ACCOUNT)] == ["r1"]
    settled = await book.usage("r1")
    assert settled is not None and settled.record == item and settled.shortfall_nusd == 10
    again = await book.settle_batch([item, dataclasses.replace(item, payees=(Payee(REVENUE_ACCOUNT, 100),))])
    assert [(r.outcome, r.charged_nusd) for r in again] == [(SettleOutcome.REPLAY, 90), (SettleOutcome.CONFLICT, 0)]
    totals = await book.totals()
    assert (totals.revenue_nusd, (await book.wallet("byok")).balance_nusd, totals.shortfall_nusd) == (80, 20, -10)
    check_invariants(totals)


async def test_an_unknown_payee_settles_nothing_for_its_item_only(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("d1", "w", 500))
    bad = dataclasses.replace(usage("r1", "w", 100), payees=(Payee(REVENUE_ACCOUNT, 50), Payee("nobody", 50)))
    results = await book.settle_batch([bad, usage("r2", "w", 100)])
    assert [r.outcome for r in results] == [SettleOutcome.UNKNOWN_PAYEE, SettleOutcome.SETTLED]
    assert (results[0].charged_nusd, results[0].balance_nusd, results[0].version) == (0, 500, 1)
    assert await book.usage("r1") is None and (await book.wallet("w")).balance_nusd == 400
    check_invariants(await book.totals())


def test_payees_default_to_revenue_and_round_trip_through_the_journal() -> None:
    item = usage("r1", "w", 250)
    assert item.payees == (Payee(REVENUE_ACCOUNT, 250),) and usage("r0", "w", 0).payees == ()
    line = json.dumps(item.as_dict())
    assert UsageRecord(**json.loads(line)) == item
    old_line = {k: v for k, v in item.as_dict().items() if k != "payees"}  # written before payees existed
    assert UsageRecord(**old_line) == item
    split = dataclasses.replace(item, payees=(Payee("creator", 200), Payee(REVENUE_ACCOUNT, 50)))
    assert UsageRecord(**json.loads(json.dumps(split.as_dict()))) == split
    for wrong in ((Payee(REVENUE_ACCOUNT, 249),), (Payee("a", 125), Payee("a", 125)), (Payee("w", 250),)):
        with pytest.raises(AssertionError):
            dataclasses.replace(item, payees=wrong)
    with pytest.raises(AssertionError):
        Payee("a", 0)


async def test_a_reversal_takes_what_is_there_and_records_the_rest_as_owed(book: Book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("d1", "w", 100))
    full = await book.reverse(Reversal("refund-1", "w", FUNDING_ACCOUNT, 60, memo="card refund"))
    assert (full.taken_nusd, full.owed_nusd, full.outcome) == (60, 0, TransferOutcome.CREATED)
    partial = await book.reverse(Reversal("chargeback-1", "w", FUNDING_ACCOUNT, 70))
    assert (partial.taken_nusd, partial.owed_nusd) == (40, 30)
    empty = await book.reverse(Reversal("clawback-1", "w", REVENUE_ACCOUNT, 25))
    assert (empty.taken_nusd, empty.owed_nusd) == (0, 25)
    assert (await book.wallet("w")).balance_nusd == 0 and await book.owed("w") == 55
    # A replay answers the first split, even though the balance has changed since.
    await book.transfer(deposit("d2", "w", 1_000))
    replay = await book.reverse(Reversal("chargeback-1", "w", FUNDING_ACCOUNT, 70))
    assert (replay.taken_nusd, replay.owed_nusd, replay.outcome) == (40, 30, TransferOutcome.EXISTS)
    for conflict in (Reversal("chargeback-1", "w", FUNDING_ACCOUNT, 71), Reversal("chargeback-1", "w", REVENUE_ACCOUNT, 70),
                     Reversal("refund-1", "w", FUNDING_ACCOUNT, 60, memo="other")):
        with pytest.raises(IdempotencyConflict):
            await book.reverse(conflict)
    with pytest.raises(UnknownAccount):
        await book.reverse(Reversal("x", "ghost", FUNDING_ACCOUNT, 5))
    with pytest.raises(UnknownAccount):
        await book.reverse(Reversal("y", REVENUE_ACCOUNT, FUNDING_ACCOUNT, 5))
    assert (await book.wallet("w")).balance_nusd == 1_000 and await book.owed("w") == 55 and await book.owed("nobody") == 0
    totals = await book.totals()
    assert totals.revenue_nusd == 25
    check_invariants(totals)


async def test_postgres_updates_each_account_once_per_settle_batch(pg_dsn: str) -> None:
    """The hot sys:revenue row: one UPDATE per batch, not one per transfer."""
    import asyncpg
    import orjson

    from ledger.postgres_book import PostgresBook

    book = await PostgresBook.connect(pg_dsn)
    try:
        await book.migrate()
        wallets = [f"w{i}" for i in range(4)]
        for wallet in wallets:
            await book.create_wallet(wallet)
            await book.transfer(deposit(f"d-{wallet}", wallet, 1_000))
    finally:
        await book.close()
    items = [usage(f"r{i}", wallets[i % 4], 300) for i in range(20)]  # later items run short
    conn = await asyncpg.connect(pg_dsn)
    try:
        async with conn.transaction():
            query = "SELECT n_tup_upd FROM pg_stat_xact_user_tables WHERE relid = 'mw_accounts'::regclass"
            before = await conn.fetchval(query)
            results = await conn.fetch("SELECT * FROM mw_settle_batch($1::jsonb)",
                                       orjson.dumps([i.as_dict() for i in items]).decode())
            updates = await conn.fetchval(query) - before
    finally:
        await conn.close()
    assert {r["outcome"] for r in results} == {"settled"} and sum(r["shortfall_nusd"] for r in results) > 0
    assert updates == len(wallets) + 2  # each wallet, sys:revenue and sys:shortfall: once each


async def test_concurrent_postings_and_settles_in_crossed_orders_do_not_deadlock(pg_dsn: str) -> None:
    """Every writer locks its accounts in id order first: opposite leg orders cannot deadlock."""
    from ledger.postgres_book import PostgresBook

    book = await PostgresBook.connect(pg_dsn, pool_max=8)
    try:
        await book.migrate()
        for wallet in ("a", "b", "c"):
            await book.create_wallet(wallet)
            await book.transfer(deposit(f"d-{wallet}", wallet, 100_000))
        calls = []
        for i in range(40):
            first, second = ("a", "b") if i % 2 else ("b", "a")
            legs = (Leg(first, second, 7), Leg(second, "c", 3), Leg("c", first, 2))
            calls.append(book.post(Posting(f"p{i}", TransferKind.PAYMENT, legs)))
            payees = (Payee(REVENUE_ACCOUNT, 5), Payee(second, 5))
            calls.append(book.settle_batch([dataclasses.replace(usage(f"r{i}", first, 10), payees=payees)]))
        await asyncio.gather(*calls)
        totals = await book.totals()
        assert totals.transfer_count == 3 + 40 * 3 + 40 * 2
        check_invariants(totals)
    finally:
        await book.close()
