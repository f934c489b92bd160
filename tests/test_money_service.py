"""The money service's one exit, below HTTP: a hold ends in exactly one of charge or release.

Run on both books, with the in-process hold store (the exit is the same for
Redis; its contract is tests/test_holds_contract.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.money.billing import Billing, Hold, HoldState, Refusal, Refused, Unsettled
from gateway.money.journal import Journal
from gateway.money.operations import Operations
from gateway.money.settlement import SettleLimits, Settler
from ledger.book import REVENUE_ACCOUNT, Book, Payee, SettleResult, check_invariants
from ledger.inprocess_holds import InProcessHolds
from tests.test_money_properties import record

LIMITS = SettleLimits(batch_max=8, queue_max=100, retry_max=0, retry_delay_s=0)


@pytest.fixture
async def money(book: Book, tmp_path: Path):
    holds = InProcessHolds()
    settler = Settler(book, holds, LIMITS, Journal(tmp_path / "journal.jsonl"))
    settler.start()
    ops = Operations(book, holds)
    await ops.create_wallet("w")
    await ops.credit("w", 1_000)
    try:
        yield Billing(book, holds, settler, 60.0), holds, settler
    finally:
        await settler.close()


async def test_leaving_without_a_charge_releases_the_hold(money) -> None:
    billing, holds, _ = money
    held = await billing.reserve("w", "r1", 400)
    assert isinstance(held, Hold)
    with pytest.raises(RuntimeError):
        async with held:
            assert (await holds.wallet("w")).held_nusd == 400
            raise RuntimeError("the handler failed after the hold")
    assert held.state is HoldState.RELEASED and (await holds.wallet("w")).held_nusd == 0


async def test_a_cancelled_request_releases_its_hold(money) -> None:
    billing, holds, _ = money
    held = await billing.reserve("w", "r2", 300)
    assert isinstance(held, Hold)
    entered = asyncio.Event()

    async def request() -> None:
        async with held:
            entered.set()
            await asyncio.sleep(60)

    task = asyncio.create_task(request())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert held.state is HoldState.RELEASED and (await holds.wallet("w")).held_nusd == 0


async def test_a_charge_settles_once_and_the_exit_then_releases_nothing(money, book: Book) -> None:
    billing, holds, _ = money
    held = await billing.reserve("w", "r3", 500)
    assert isinstance(held, Hold)
    async with held as hold:
        result = await hold.charge(record(hold, 120))
        with pytest.raises(AssertionError):
            await hold.charge(record(hold, 120))  # a second charge is a bug, not a second debit
    assert isinstance(result, SettleResult) and result.charged_nusd == 120
    assert hold.state is HoldState.SETTLED and (await holds.wallet("w")).held_nusd == 0
    assert (await book.wallet("w")).balance_nusd == 880
    check_invariants(await book.totals())


async def test_a_refusal_is_a_value_with_a_reason(money) -> None:
    billing, _, _ = money
    refused = await billing.reserve("w", "r4", 5_000)
    assert refused == Refused(Refusal.INSUFFICIENT_FUNDS, 1_000, 5_000)


async def test_a_missing_payee_account_charges_nothing_and_keeps_the_record(money, book: Book, tmp_path: Path) -> None:
    """A pricing decision naming an account that does not exist is a bug: nothing is written, the
    client is shown no cost, the hold is freed, and the record waits in the journal for a fix."""
    billing, holds, settler = money
    held = await billing.reserve("w", "r5", 500)
    assert isinstance(held, Hold)
    payees = (Payee(REVENUE_ACCOUNT, 80), Payee("creator:nobody", 20))
    async with held as hold:
        result = await hold.charge(record(hold, 100, payees))
    assert isinstance(result, Unsettled) and "unknown_payee" in result.reason
    await settler.drain()
    assert (await holds.wallet("w")).held_nusd == 0
    assert (await book.wallet("w")).balance_nusd == 1_000 and await book.usage("r5") is None
    journal = Journal(tmp_path / "journal.jsonl")
    kept = []
    for path in journal.files():
        with journal.claim(path) as claimed:
            assert claimed is not None
            kept += [entry.record.request_id for entry in claimed.entries if entry.record is not None]
            journal.keep(path, claimed.entries)
    assert kept == ["r5"]
    report = await settler.replay_journal()
    assert report.kept == 1 and report.settled == 0  # still no such account: it stays
    check_invariants(await book.totals())
