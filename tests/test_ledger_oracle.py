"""The settle rule is written once (ledger/model.py); both books must agree with it.

Hypothesis generates cases (wallets and balances, batches of requests with
multi-payee splits, replays, conflicts, unknown wallets and payees); the SAME
case runs on SqliteBook and on PostgresBook, and the model is the oracle for
every SettleResult, every reversal and posting, and every balance at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    SHORTFALL_ACCOUNT,
    Book,
    Leg,
    Payee,
    Posting,
    Reversal,
    ReversalResult,
    TransferKind,
    UsageRecord,
    check_invariants,
)
from ledger.errors import IdempotencyConflict, InsufficientFunds, UnknownAccount
from ledger.model import SettleModel
from ledger.postgres_book import PostgresBook
from ledger.sqlite_book import SqliteBook
from tests.conftest import pg_schema
from tests.test_ledger_contract import deposit, usage

WALLETS = ("w0", "w1", "creator")  # the creator is paid by others and pays too
SYSTEM = (FUNDING_ACCOUNT, REVENUE_ACCOUNT, SHORTFALL_ACCOUNT)
REQUEST_IDS = tuple(f"r{i}" for i in range(8))  # a small pool: replays and conflicts happen

item_strategy = st.tuples(
    st.sampled_from(REQUEST_IDS),
    st.sampled_from((*WALLETS, "ghost")),
    st.integers(0, 600),  # cost
    st.sampled_from(("revenue", "split", "split-reversed", "unknown-payee")),
    st.integers(1, 99),  # the first payee's share, in percent
)
reversal_strategy = st.tuples(
    st.sampled_from(("x0", "x1", "x2")),  # a small pool of reversal ids: replays and conflicts
    st.sampled_from(WALLETS),
    st.sampled_from((FUNDING_ACCOUNT, REVENUE_ACCOUNT)),
    st.integers(1, 900),
)
leg_strategy = st.tuples(st.sampled_from((*WALLETS, REVENUE_ACCOUNT, FUNDING_ACCOUNT, "nobody")),
                         st.sampled_from((*WALLETS, REVENUE_ACCOUNT)), st.integers(1, 500))
posting_strategy = st.tuples(st.sampled_from(("p0", "p1", "p2")), st.lists(leg_strategy, min_size=1, max_size=3))
step_strategy = st.one_of(
    st.tuples(st.just("settle"), st.lists(item_strategy, min_size=1, max_size=6)),
    st.tuples(st.just("reverse"), reversal_strategy),
    st.tuples(st.just("post"), posting_strategy),
)
case_strategy = st.tuples(
    st.tuples(*(st.integers(0, 800) for _ in WALLETS)),  # opening balances
    st.lists(step_strategy, min_size=1, max_size=6),
)


def make_item(request_id: str, wallet: str, cost: int, split: str, share_percent: int) -> UsageRecord:
    other = "creator" if wallet != "creator" else "w0"
    first = cost * share_percent // 100
    if split == "revenue" or first in (0, cost):
        payees: tuple[Payee, ...] = ()
    elif split == "split":
        payees = (Payee(REVENUE_ACCOUNT, first), Payee(other, cost - first))
    elif split == "split-reversed":
        payees = (Payee(other, first), Payee(REVENUE_ACCOUNT, cost - first))
    else:
        payees = (Payee(REVENUE_ACCOUNT, first), Payee("nobody", cost - first))
    return dataclasses.replace(usage(request_id, wallet, cost), payees=payees)


@contextlib.asynccontextmanager
async def open_book(backend: str, tmp_dir: str) -> AsyncIterator[Book]:
    if backend == "sqlite":
        book: Book = SqliteBook(f"{tmp_dir}/{uuid.uuid4().hex}.sqlite3")
        await book.migrate()
        try:
            yield book
        finally:
            await book.close()
        return
    async with pg_schema() as dsn:
        book = await PostgresBook.connect(dsn, pool_max=2)
        try:
            await book.migrate()
            yield book
        finally:
            await book.close()


async def run_case(backend: str, tmp_dir: str, case: tuple) -> None:
    openings, steps = case
    model = SettleModel()
    for account in SYSTEM:
        model.add_account(account, may_go_negative=account != REVENUE_ACCOUNT)
    async with open_book(backend, tmp_dir) as book:
        for wallet, opening in zip(WALLETS, openings, strict=True):
            await book.create_wallet(wallet)
            model.add_account(wallet, wallet=True)
            if opening:
                await book.transfer(deposit(f"open-{wallet}", wallet, opening))
                model.move(FUNDING_ACCOUNT, wallet, opening)
        for kind, step in steps:
            if kind == "settle":
                items = [make_item(*spec) for spec in step]
                expected = model.settle_batch(items)
                assert await book.settle_batch(items) == expected, (backend, step)
            elif kind == "reverse":
                await check_reversal(book, model, Reversal(*step))
            else:
                await check_posting(book, model, step)
        for account in (*WALLETS, *SYSTEM):
            stored = await book_balance(book, account)
            assert stored == (model.balances[account], model.versions[account]), (backend, account)
            assert await book.owed(account) == model.owed(account), (backend, account)
        check_invariants(await book.totals())


async def check_reversal(book: Book, model: SettleModel, reversal: Reversal) -> None:
    try:
        expected: ReversalResult | type[IdempotencyConflict] = model.reverse(reversal)
    except IdempotencyConflict:
        expected = IdempotencyConflict
    try:
        got: ReversalResult | type[IdempotencyConflict] = await book.reverse(reversal)
    except IdempotencyConflict:
        got = IdempotencyConflict
    assert got == expected, reversal


async def check_posting(book: Book, model: SettleModel, step: tuple) -> None:
    posting_id, legs = step
    legs = [Leg(*leg) for leg in legs if leg[0] != leg[1]]
    if not legs:
        return
    posting = Posting(posting_id, TransferKind.PAYMENT, tuple(legs))
    refusals = (IdempotencyConflict, InsufficientFunds, UnknownAccount)
    try:
        expected: object = model.post(posting)
    except refusals as exc:
        expected = type(exc)
    try:
        got: object = await book.post(posting)
    except refusals as exc:
        got = type(exc)
    assert got == expected, posting


async def book_balance(book: Book, account: str) -> tuple[int, int]:
    wallet = await book.wallet(account)
    if wallet is not None:
        return wallet.balance_nusd, wallet.version
    records = await book.transfers_of(account, limit=10_000)
    balance = sum(r.transfer.amount_nusd if r.transfer.credit_account == account else -r.transfer.amount_nusd
                  for r in records)
    return balance, len(records)


def test_both_books_settle_exactly_as_the_model_says(tmp_path) -> None:
    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case_strategy)
    def scenario(case: tuple) -> None:
        for backend in ("sqlite", "postgres"):
            asyncio.run(run_case(backend, str(tmp_path), case))

    scenario()
