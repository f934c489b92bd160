"""Card money in the ledger (ledger/payments.py): one contract on SQLite and Postgres (the `book` fixture).

A deposit credits its face amount once, in two balanced postings (paid and
discount); take-backs are proportional, never past what was paid, and leave
what was spent as a receivable; one auto-reload is in flight per wallet
however many claim it at once; processed events are remembered.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.book import DISCOUNTS_ACCOUNT, FUNDING_ACCOUNT, Transfer, TransferKind, TransferOutcome, check_invariants
from ledger.errors import UnknownAccount
from ledger.money import parse_usd
from ledger.owners import Deposit, DepositNotPending, DepositStatus
from ledger.payments import take_back_targets
from ledger.times import utc_text

CENT = 10**7


def card_deposit(wallet: str, usd: str, discount_usd: str = "0", **fields) -> Deposit:
    amount, discount = parse_usd(usd), parse_usd(discount_usd)
    paid_cents = (amount - discount) // CENT
    return Deposit(f"dep_{uuid.uuid4().hex[:12]}", wallet, "card", amount, f"{paid_cents / 100:.2f}", "usd",
                   DepositStatus.PENDING, utc_text(datetime.now(UTC)), discount_nusd=discount, paid_cents=paid_cents,
                   **fields)


async def wallet_with(book, usd: str = "0") -> str:
    wallet = f"w{uuid.uuid4().hex[:10]}"
    await book.create_wallet(wallet, wallet)
    if parse_usd(usd):
        await book.transfer(Transfer(f"fund-{wallet}", FUNDING_ACCOUNT, wallet, parse_usd(usd), TransferKind.ADJUSTMENT))
    return wallet


async def test_a_discounted_deposit_is_two_postings_credited_once(book) -> None:
    wallet = await wallet_with(book)
    dep = card_deposit(wallet, "100", "5", tier="100")
    await book.create_deposit(dep)
    before = (await book.totals()).funding_nusd
    assert await book.complete_deposit(dep.deposit_id, payment_ref="pi_1", customer_ref="cus_1") is TransferOutcome.CREATED
    assert await book.complete_deposit(dep.deposit_id, payment_ref="pi_1") is TransferOutcome.EXISTS
    assert (await book.wallet(wallet)).balance_nusd == parse_usd("100")
    assert (await book.totals()).funding_nusd == before - parse_usd("95")
    legs = {(r.transfer.kind, r.transfer.debit_account, r.transfer.amount_nusd) for r in await book.transfers_of(wallet)}
    assert legs == {(TransferKind.DEPOSIT, FUNDING_ACCOUNT, parse_usd("95")),
                    (TransferKind.DISCOUNT, DISCOUNTS_ACCOUNT, parse_usd("5"))}
    found = await book.deposit_by_payment_ref("pi_1")
    assert found is not None and found.status is DepositStatus.COMPLETED and found.customer_ref == "cus_1"
    assert found.tier == "100" and found.discount_nusd == parse_usd("5") and found.paid_cents == 9500
    check_invariants(await book.totals())


async def test_only_a_pending_deposit_completes_and_refs_are_one_to_one(book) -> None:
    wallet = await wallet_with(book)
    dep = card_deposit(wallet, "10")
    await book.create_deposit(dep)
    await book.set_deposit_ref(dep.deposit_id, "cs_test_1")
    await book.set_deposit_ref(dep.deposit_id, "cs_test_1")  # the same ref again is fine
    with pytest.raises(UnknownAccount):  # a deposit belongs to one session
        await book.set_deposit_ref(dep.deposit_id, "cs_test_2")
    assert (await book.deposit_by_ref("cs_test_1")).deposit_id == dep.deposit_id
    await book.set_deposit_status(dep.deposit_id, DepositStatus.EXPIRED)
    with pytest.raises(DepositNotPending):
        await book.complete_deposit(dep.deposit_id)
    assert (await book.wallet(wallet)).balance_nusd == 0


async def test_concurrent_completions_credit_once(book) -> None:
    wallet = await wallet_with(book)
    dep = card_deposit(wallet, "25")
    await book.create_deposit(dep)
    outcomes = await asyncio.gather(*(book.complete_deposit(dep.deposit_id) for _ in range(10)))
    assert sorted(o.value for o in outcomes) == ["created"] + ["exists"] * 9
    assert (await book.wallet(wallet)).balance_nusd == parse_usd("25")


async def test_take_backs_are_proportional_cumulative_and_leave_a_receivable(book) -> None:
    wallet = await wallet_with(book)
    dep = card_deposit(wallet, "100", "20")  # paid $80 (8000 cents) for $100
    await book.create_deposit(dep)
    await book.complete_deposit(dep.deposit_id)
    await book.transfer(Transfer("spent", wallet, FUNDING_ACCOUNT, parse_usd("70"), TransferKind.ADJUSTMENT))
    first = await book.reverse_deposit_upto(dep.deposit_id, "card_refund:ch_1", TransferKind.CARD_REFUND, 4000)
    assert first.taken_nusd + first.owed_nusd == parse_usd("50")  # half the payment: half the credit
    again = await book.reverse_deposit_upto(dep.deposit_id, "card_refund:ch_1", TransferKind.CARD_REFUND, 4000)
    older = await book.reverse_deposit_upto(dep.deposit_id, "card_refund:ch_1", TransferKind.CARD_REFUND, 2000)
    assert again.taken_nusd + again.owed_nusd == 0 and older.taken_nusd + older.owed_nusd == 0
    assert (await book.deposit(dep.deposit_id)).status is DepositStatus.COMPLETED
    rest = await book.reverse_deposit_upto(dep.deposit_id, "chargeback:dp_1", TransferKind.CHARGEBACK, 4000)
    assert rest.taken_nusd + rest.owed_nusd == parse_usd("50")
    assert (await book.deposit(dep.deposit_id)).status is DepositStatus.REFUNDED
    assert (await book.wallet(wallet)).balance_nusd == 0
    assert await book.owed(wallet) == parse_usd("70")  # spent before the take-backs: owed, not lost
    check_invariants(await book.totals())


async def test_concurrent_take_backs_never_pass_what_was_paid(book) -> None:
    wallet = await wallet_with(book)
    dep = card_deposit(wallet, "10")
    await book.create_deposit(dep)
    await book.complete_deposit(dep.deposit_id)
    await asyncio.gather(*(book.reverse_deposit_upto(dep.deposit_id, "card_refund:ch_9", TransferKind.CARD_REFUND, c)
                           for c in (300, 1000, 700, 1000, 500)))
    assert (await book.wallet(wallet)).balance_nusd == 0 and await book.owed(wallet) == 0
    assert (await book.deposit(dep.deposit_id)).status is DepositStatus.REFUNDED


@given(credited=st.integers(1, 10**6).map(lambda c: c * CENT), share=st.floats(0, 0.9),
       cents=st.integers(-5, 2 * 10**6))
def test_take_back_targets_never_exceed_the_credit(credited: int, share: float, cents: int) -> None:
    discount = int(credited * share) // CENT * CENT
    paid_cents = (credited - discount) // CENT
    dep = Deposit("d", "w", "card", credited, "x", "usd", DepositStatus.COMPLETED, "t", discount_nusd=discount,
                  paid_cents=paid_cents)
    paid, disc = take_back_targets(dep, cents)
    assert 0 <= paid <= credited - discount and 0 <= disc <= discount
    if cents >= paid_cents:
        assert (paid, disc) == (credited - discount, discount)


async def test_one_auto_reload_claim_wins_and_a_decline_pauses(book) -> None:
    wallet = await wallet_with(book)
    assert await book.auto_reload(wallet) is None
    await book.set_auto_reload(wallet, True, parse_usd("5"), parse_usd("20"))
    assert not (await book.auto_reload(wallet)).ready  # no card saved yet
    await book.save_payment_method(wallet, "cus_1", "pm_1")
    assert (await book.auto_reload(wallet)).ready
    deposits = [card_deposit(wallet, "20", purpose="auto_reload") for _ in range(20)]
    wins = await asyncio.gather(*(book.claim_auto_reload(wallet, d) for d in deposits))
    assert sum(wins) == 1
    winner = deposits[wins.index(True)]
    assert (await book.auto_reload(wallet)).in_flight_deposit_id == winner.deposit_id
    await book.finish_auto_reload(wallet, "dep_not_it", "x")  # only the claimed deposit frees the claim
    assert (await book.auto_reload(wallet)).in_flight_deposit_id == winner.deposit_id
    await book.finish_auto_reload(wallet, winner.deposit_id, "card_declined: Your card was declined.")
    state = await book.auto_reload(wallet)
    assert state.in_flight_deposit_id is None and state.paused_reason is not None and not state.ready
    assert not await book.claim_auto_reload(wallet, card_deposit(wallet, "20", purpose="auto_reload"))
    notes = await book.notifications(wallet, 10)
    assert [n.kind for n in notes] == ["auto_reload_paused"]
    await book.set_auto_reload(wallet, True, parse_usd("5"), parse_usd("20"))  # enabling again clears the pause
    assert (await book.auto_reload(wallet)).ready
    assert [r.wallet_id for r in await book.enabled_auto_reloads() if r.wallet_id == wallet] == [wallet]


async def test_processed_events_are_remembered_once(book) -> None:
    assert not await book.event_seen("evt_1")
    await book.record_event("evt_1", "checkout.session.completed")
    await book.record_event("evt_1", "checkout.session.completed")
    assert await book.event_seen("evt_1")


async def test_a_deposit_with_validity_opens_a_lot(book) -> None:
    wallet = await wallet_with(book, "3")
    expires = datetime(2100, 1, 1, tzinfo=UTC) + timedelta(days=30)
    dep = card_deposit(wallet, "10", credit_expires_at=utc_text(expires))
    await book.create_deposit(dep)
    await book.complete_deposit(dep.deposit_id)
    lots = await book.lots(wallet)
    assert [(lot.lot_id, lot.remaining_nusd) for lot in lots] == [(dep.deposit_id, parse_usd("10"))]
    nxt = await book.next_expiry(wallet)
    assert nxt is not None and nxt.amount_nusd == parse_usd("10")
