"""Credit validity (ledger/lots.py): one contract, run on SQLite and Postgres alike (the `book` fixture).

Lots are spent soonest expiry first, non-expiring money last; what is left of a
lot at its expiry leaves the wallet once (expiry:<lot>), never overdrawing it.
An in-memory oracle that applies every transfer in order is the reference, for
hand-written cases and for hypothesis-generated ones on both books.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import lots as rules
from ledger import postgres_lots, sqlite_lots
from ledger import sqlite_postings as postings
from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    Leg,
    Posting,
    Reversal,
    Transfer,
    TransferKind,
    TransferOutcome,
    check_invariants,
)
from ledger.errors import IdempotencyConflict
from ledger.lots import Checkpoint, Lot, LotConflict, NextExpiry, TailNow
from ledger.postgres_book import PostgresBook
from ledger.sqlite_book import SqliteBook
from ledger.times import utc_text
from tests.conftest import pg_schema
from tests.test_ledger_contract import deposit, usage

BASE = datetime(2100, 1, 1, tzinfo=UTC)  # lots expire relative to this; nothing is due by the real clock


def day(n: int) -> datetime:
    return BASE + timedelta(days=n)


async def add_lot(book, wallet: str, lot_id: str, amount: int, expires_day: int) -> TransferOutcome:
    posting = Posting(f"deposit:{lot_id}", TransferKind.DEPOSIT, (Leg(FUNDING_ACCOUNT, wallet, amount),))
    return await book.add_lot(posting, wallet, lot_id, day(expires_day))


async def spend(book, wallet: str, request_id: str, amount: int) -> None:
    await book.settle_batch([usage(request_id, wallet, amount)])


async def remaining(book, wallet: str) -> dict[str, int]:
    return {lot.lot_id: lot.remaining_nusd for lot in await book.lots(wallet)}


async def balance(book, wallet: str) -> int:
    return (await book.wallet(wallet)).balance_nusd


async def test_spending_takes_the_soonest_lots_first_and_non_expiring_money_last(book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("free", "w", 50))
    assert await add_lot(book, "w", "late", 100, 20) is TransferOutcome.CREATED
    assert await add_lot(book, "w", "soon", 100, 10) is TransferOutcome.CREATED
    assert await book.next_expiry("w") == NextExpiry(100, utc_text(day(10)))
    await spend(book, "w", "r1", 120)
    assert await remaining(book, "w") == {"soon": 0, "late": 80}
    assert [(lot.lot_id, lot.remaining_nusd) for lot in await book.reconcile_lots("w")] == [("soon", 0), ("late", 80)]
    assert await book.next_expiry("w") == (80, utc_text(day(20)))
    await spend(book, "w", "r2", 100)  # 80 from "late", then 20 of the non-expiring 50
    assert await remaining(book, "w") == {"soon": 0, "late": 0}
    assert await book.next_expiry("w") is None and await balance(book, "w") == 30
    check_invariants(await book.totals())


async def test_expiry_takes_what_is_left_once_and_leaves_non_expiring_money(book) -> None:
    await book.create_wallet("w")
    await book.transfer(deposit("free", "w", 50))
    await add_lot(book, "w", "a", 100, 1)
    await add_lot(book, "w", "b", 40, 5)
    await spend(book, "w", "r1", 30)
    assert await book.expire_lots(day(0)) == []  # nothing due yet
    expired = await book.expire_lots(day(2))
    assert [(e.lot_id, e.wallet_id, e.amount_nusd, e.posting_id) for e in expired] == [("a", "w", 70, "expiry:a")]
    assert await balance(book, "w") == 90 and await remaining(book, "w") == {"b": 40}
    assert await book.expire_lots(day(2)) == []  # idempotent
    expired = await book.expire_lots(day(9))
    assert [(e.lot_id, e.amount_nusd) for e in expired] == [("b", 40)]
    assert await book.expire_lots(day(9)) == [] and await balance(book, "w") == 50  # the non-expiring money stays
    history = await book.transfers_of("w")
    assert sorted(t.transfer.transfer_id for t in history if t.transfer.kind is TransferKind.EXPIRY) == ["expiry:a", "expiry:b"]
    assert all(t.transfer.credit_account == FUNDING_ACCOUNT for t in history if t.transfer.kind is TransferKind.EXPIRY)
    check_invariants(await book.totals())


async def test_a_spent_lot_expires_with_nothing_and_never_overdraws(book) -> None:
    await book.create_wallet("w")
    await add_lot(book, "w", "a", 100, 1)
    await spend(book, "w", "r1", 130)  # 100 charged, 30 shortfall: the wallet is empty
    assert await balance(book, "w") == 0
    assert await book.expire_lots(day(3)) == []
    assert await book.lots("w") == [] and await balance(book, "w") == 0
    assert not [t for t in await book.transfers_of("w") if t.transfer.kind is TransferKind.EXPIRY]
    check_invariants(await book.totals())


async def test_a_reversal_consumes_like_a_debit_and_a_refund_is_non_expiring(book) -> None:
    await book.create_wallet("w")
    await add_lot(book, "w", "a", 100, 1)
    await book.reverse(Reversal("chargeback-1", "w", FUNDING_ACCOUNT, 60))
    assert await remaining(book, "w") == {"a": 40}
    await spend(book, "w", "r1", 40)
    await book.transfer(Transfer("refund-r1", REVENUE_ACCOUNT, "w", 25, TransferKind.REFUND))
    assert await remaining(book, "w") == {"a": 0}
    assert await book.expire_lots(day(2)) == [] and await balance(book, "w") == 25
    check_invariants(await book.totals())


async def test_add_lot_is_idempotent_and_refuses_a_different_lot(book) -> None:
    await book.create_wallet("w")
    assert await add_lot(book, "w", "a", 100, 1) is TransferOutcome.CREATED
    assert await add_lot(book, "w", "a", 100, 1) is TransferOutcome.EXISTS
    with pytest.raises(IdempotencyConflict):
        await add_lot(book, "w", "a", 90, 1)
    with pytest.raises(LotConflict):  # the credit exists, the lot differs
        await add_lot(book, "w", "a", 100, 2)
    assert await balance(book, "w") == 100 and await remaining(book, "w") == {"a": 100}
    await book.post(Posting("deposit:b", TransferKind.DEPOSIT, (Leg(FUNDING_ACCOUNT, "w", 40),)))
    with pytest.raises(LotConflict):  # credited before without its lot: the lot is not opened late
        await add_lot(book, "w", "b", 40, 1)
    assert await remaining(book, "w") == {"a": 100} and await balance(book, "w") == 140


async def test_open_lot_needs_the_credit_in_its_transaction(book) -> None:
    """The function complete_deposit calls: after the credit, inside the same transaction."""
    await book.create_wallet("w")
    await book.transfer(deposit("free", "w", 30))
    with pytest.raises(LotConflict):  # 50 of expiring credit cannot come out of 30
        await open_lot_alone(book, "w", "x", 50, day(1))
    assert await open_lot_alone(book, "w", "y", 30, day(1)) is TransferOutcome.CREATED  # converts existing money
    assert await remaining(book, "w") == {"y": 30}
    with pytest.raises(LotConflict):
        await open_lot_alone(book, "w", "y", 30, day(2))


async def open_lot_alone(book, wallet: str, lot_id: str, amount: int, expires: datetime) -> TransferOutcome:
    if isinstance(book, SqliteBook):
        return await book._run(lambda conn: postings.atomic(
            conn, lambda c: sqlite_lots.open_lot(c, wallet, lot_id, amount, expires)))

    async def run(conn):
        async with conn.transaction():
            return await postgres_lots.open_lot(conn, wallet, lot_id, amount, expires)

    return await book._with(run)


async def raw(book, sql: str) -> None:
    if isinstance(book, SqliteBook):
        await book._run(lambda conn: postings.atomic(conn, lambda c: c.execute(sql)))
    else:
        await book._with(lambda conn: conn.execute(sql))


async def test_a_transfer_that_commits_late_with_an_old_time_is_still_counted(book) -> None:
    """A transaction older than the tail margin (or a clock gone back): the whole-history sums answer, exactly."""
    await book.create_wallet("w")
    await book.transfer(deposit("free", "w", 500))
    await add_lot(book, "w", "a", 100, 1)
    await spend(book, "w", "r1", 10)
    old = "2000-01-01T00:00:00.000Z"
    await raw(book, "INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind, created_at)"
                    f" VALUES ('late', 'late', 'w', 'sys:revenue', 30, 'payment', '{old}')")
    assert await remaining(book, "w") == {"a": 60}
    await book.transfer(deposit("free2", "w", 5))
    assert await remaining(book, "w") == {"a": 60}
    assert [e.amount_nusd for e in await book.expire_lots(day(2))] == [60]
    await add_lot(book, "w", "b", 10, 3)  # after the sweep's checkpoint, the tail answers again
    await spend(book, "w", "r2", 4)
    assert await remaining(book, "w") == {"b": 6}
    check_invariants(await book.totals())


async def test_concurrent_sweeps_expire_each_lot_once(book) -> None:
    wallets = [f"w{i}" for i in range(6)]
    for index, wallet in enumerate(wallets):
        await book.create_wallet(wallet)
        await book.transfer(deposit(f"free-{wallet}", wallet, 7))
        await add_lot(book, wallet, f"lot-{wallet}", 100 + index, 1)
        await add_lot(book, wallet, f"lot2-{wallet}", 50, 2)
        await spend(book, wallet, f"r-{wallet}", 20)
    results = await asyncio.gather(*(book.expire_lots(day(5), batch_max=5) for _ in range(4)))
    results.append(await book.expire_lots(day(5)))
    expired = [e for batch in results for e in batch]
    assert sorted(e.lot_id for e in expired) == sorted([f"lot-{w}" for w in wallets] + [f"lot2-{w}" for w in wallets])
    assert sum(e.amount_nusd for e in expired) == sum(130 + i for i in range(6))  # each wallet spent 20 of its first lot
    for wallet in wallets:
        assert await balance(book, wallet) == 7
    assert await book.expire_lots(day(5)) == []
    check_invariants(await book.totals())


# --- the oracle: every transfer applied in order, lots consumed at once --------------------------


@dataclass
class Oracle:
    balance: int = 0
    lots: dict[str, list] = field(default_factory=dict)  # lot id -> [remaining, expires day, closed]

    def _take(self, amount: int) -> None:
        for lot_id in sorted((i for i, lot in self.lots.items() if not lot[2]), key=lambda i: (self.lots[i][1], i)):
            take = min(amount, self.lots[lot_id][0])
            self.lots[lot_id][0] -= take
            amount -= take

    def credit(self, amount: int) -> None:
        self.balance += amount

    def lot(self, lot_id: str, amount: int, expires: int) -> None:
        self.balance += amount
        self.lots[lot_id] = [amount, expires, False]

    def debit(self, amount: int) -> None:  # settlement and reversals take what the wallet has
        taken = min(amount, self.balance)
        self.balance -= taken
        self._take(taken)

    def expire(self, today: int) -> list[tuple[str, int]]:
        posted = []
        for lot_id in sorted((i for i, lot in self.lots.items() if not lot[2] and lot[1] <= today),
                             key=lambda i: (self.lots[i][1], i)):
            left = self.lots[lot_id][0]
            if left:
                posted.append((lot_id, left))
            self.balance -= left
            self.lots[lot_id] = [0, self.lots[lot_id][1], True]
        return posted

    def open_lots(self) -> dict[str, int]:
        return {i: lot[0] for i, lot in self.lots.items() if not lot[2]}


step = st.one_of(
    st.tuples(st.just("credit"), st.integers(1, 300)),
    st.tuples(st.just("lot"), st.integers(1, 300), st.integers(0, 6)),
    st.tuples(st.just("spend"), st.integers(1, 400)),
    st.tuples(st.just("reverse"), st.integers(1, 200)),
    st.tuples(st.just("expire"), st.integers(0, 6)),
    st.tuples(st.just("reconcile")),
)


async def run_case(book, steps: list[tuple]) -> None:
    wallet = f"h{uuid.uuid4().hex[:10]}"
    await book.create_wallet(wallet)
    oracle = Oracle()
    for n, (kind, *args) in enumerate(steps):
        tag = f"{wallet}-{n}"
        if kind == "credit":
            await book.transfer(deposit(tag, wallet, args[0]))
            oracle.credit(args[0])
        elif kind == "lot":
            await add_lot(book, wallet, tag, args[0], args[1])
            oracle.lot(tag, args[0], args[1])
        elif kind == "spend":
            await spend(book, wallet, tag, args[0])
            oracle.debit(args[0])
        elif kind == "reverse":
            await book.reverse(Reversal(tag, wallet, FUNDING_ACCOUNT, args[0]))
            oracle.debit(args[0])
        elif kind == "reconcile":  # a kept checkpoint changes nothing but where the next read starts
            assert {lot.lot_id: lot.remaining_nusd for lot in await book.reconcile_lots(wallet)} == oracle.open_lots()
        else:
            mine = [(e.lot_id, e.amount_nusd) for e in await book.expire_lots(day(args[0])) if e.wallet_id == wallet]
            assert sorted(mine) == sorted(oracle.expire(args[0])), steps
        assert await balance(book, wallet) == oracle.balance, steps
        assert await remaining(book, wallet) == oracle.open_lots(), steps
    expected = min(((lot[1], lot[0]) for lot in oracle.lots.values() if not lot[2] and lot[0]), default=None)
    got = await book.next_expiry(wallet)
    if expected is None:
        assert got is None, steps
    else:
        soonest = expected[0]
        amount = sum(lot[0] for lot in oracle.lots.values() if not lot[2] and lot[1] == soonest)
        assert got == (amount, utc_text(day(soonest))), steps


def test_both_books_consume_and_expire_exactly_as_the_oracle(tmp_path) -> None:
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        lite = SqliteBook(str(tmp_path / "lots.sqlite3"))
        dsn = loop.run_until_complete(stack.enter_async_context(pg_schema()))
        pg = loop.run_until_complete(PostgresBook.connect(dsn))
        books = (lite, pg)
        for b in books:
            loop.run_until_complete(b.migrate())

        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(st.lists(step, min_size=1, max_size=12))
        def scenario(steps: list[tuple]) -> None:
            for b in books:
                loop.run_until_complete(run_case(b, steps))

        scenario()
        for b in books:
            check_invariants(loop.run_until_complete(b.totals()))
            loop.run_until_complete(b.close())
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


# --- the pure rule: a window's debits, applied at once, equal the same debits applied in order ---


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 100)), max_size=6),
       st.lists(st.one_of(st.tuples(st.just("debit"), st.integers(1, 150)), st.tuples(st.just("credit"), st.integers(1, 150))),
                max_size=10),
       st.integers(0, 100))
def test_a_window_consumed_at_once_equals_the_same_window_in_order(lots_spec, moves, free) -> None:
    lots = [Lot(f"l{i}", "w", 100, left, utc_text(day(d)), utc_text(BASE)) for i, (d, left) in enumerate(lots_spec)]
    balance_before = sum(lot.remaining_nusd for lot in lots) + free
    oracle = Oracle(balance_before, {lot.lot_id: [lot.remaining_nusd, d, False] for lot, (d, _) in zip(lots, lots_spec, strict=True)})
    debits = 0
    for kind, amount in moves:
        if kind == "credit":
            oracle.credit(amount)
        elif amount <= oracle.balance:  # a debit never overdraws
            oracle.debit(amount)
            debits += amount
    checkpoint = Checkpoint("w", balance_before, 0, utc_text(BASE), 0, 0, 0)
    now = TailNow(oracle.balance, len(moves), len(moves), debits, utc_text(BASE), 0, 0)
    moved, after = rules.reconcile(checkpoint, lots, now, None)
    assert {lot.lot_id: lot.remaining_nusd for lot in after} == oracle.open_lots()
    assert moved.cum_debits_nusd == debits and moved.balance_nusd == oracle.balance
    # The tail missed a transfer: the whole-history sums give the same answer.
    missed = TailNow(oracle.balance, len(moves) + 1, len(moves), debits, utc_text(BASE), 0, 0)
    assert rules.reconcile(checkpoint, lots, missed, debits)[1] == after
