"""Money that comes in by card: deposit postings, discounts, take-backs, auto-reload, notifications.

Values, pure rules and the protocol; sqlite_payments.py and postgres_payments.py
implement it. The rules that keep money exact:

- a deposit credits its face amount in two balanced postings, ``deposit:<id>``
  (sys:funding -> wallet, what was paid) and ``discount:<id>`` (sys:discounts ->
  wallet, the discount), once;
- a card refund or dispute takes back the credit in proportion to the cents
  taken back, up to a running total, so duplicates and out-of-order partial
  refunds add up to exactly what Stripe took back; what the wallet has spent
  already becomes a receivable (the reversal operation), never lost;
- at most one auto-reload per wallet is in flight, across every process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ledger.book import (
    DISCOUNTS_ACCOUNT,
    FUNDING_ACCOUNT,
    Leg,
    Posting,
    Reversal,
    ReversalResult,
    TransferKind,
    TransferOutcome,
)
from ledger.owners import Deposit, DepositStatus, Page, deposit_posting_id

TAKE_BACK_KINDS = frozenset({TransferKind.CARD_REFUND, TransferKind.CHARGEBACK})


@dataclass(frozen=True)
class AutoReload:
    wallet_id: str
    enabled: bool
    threshold_nusd: int
    amount_nusd: int
    customer_ref: str | None
    payment_method_ref: str | None
    paused_reason: str | None  # set by a declined charge; enabling again clears it
    in_flight_deposit_id: str | None
    updated_at: str | None = None

    @property
    def ready(self) -> bool:
        """On, not paused, and a saved card to charge."""
        return self.enabled and self.paused_reason is None and bool(self.customer_ref and self.payment_method_ref)


@dataclass(frozen=True)
class Notification:
    notification_id: str
    wallet_id: str
    kind: str  # "auto_reload_paused", ...
    message: str
    created_at: str


@dataclass(frozen=True)
class Keyless:
    """A keyless purchase: its wallet, and the keys made for whoever holds the paid session."""

    deposit_id: str
    wallet_id: str
    recovery_hash: str
    revealed_at: str | None
    key_id: str | None
    management_key_id: str | None


@dataclass(frozen=True)
class TakeBack:
    """What one take-back moved: the paid share and the discount share, each as the reversal did it."""

    paid: ReversalResult | None
    discount: ReversalResult | None

    @property
    def taken_nusd(self) -> int:
        return sum(r.taken_nusd for r in (self.paid, self.discount) if r is not None)

    @property
    def owed_nusd(self) -> int:
        return sum(r.owed_nusd for r in (self.paid, self.discount) if r is not None)


def discount_posting_id(deposit_id: str) -> str:
    return f"discount:{deposit_id}"


def deposit_postings(deposit: Deposit) -> list[Posting]:
    """The paid part from sys:funding and the discount from sys:discounts: two balanced postings."""
    paid = deposit.amount_credited_nusd - deposit.discount_nusd
    assert paid > 0 and deposit.discount_nusd >= 0, deposit
    memo = f"deposit {deposit.deposit_id} ({deposit.method})"
    postings = [Posting(deposit_posting_id(deposit.deposit_id), TransferKind.DEPOSIT,
                        (Leg(FUNDING_ACCOUNT, deposit.wallet_id, paid),), memo=memo)]
    if deposit.discount_nusd:
        postings.append(Posting(discount_posting_id(deposit.deposit_id), TransferKind.DISCOUNT,
                                (Leg(DISCOUNTS_ACCOUNT, deposit.wallet_id, deposit.discount_nusd),),
                                memo=f"discount on deposit {deposit.deposit_id}"))
    return postings


def take_back_targets(deposit: Deposit, cents_upto: int) -> tuple[int, int]:
    """(paid share, discount share) in nUSD that `cents_upto` cents taken back in total stand for.

    Proportional and rounded down, except that the whole payment takes back
    exactly the whole credit: nothing left over, in either direction.
    """
    paid_cents = deposit.paid_cents
    assert paid_cents is not None and paid_cents > 0, deposit
    cents = min(max(cents_upto, 0), paid_cents)
    paid = deposit.amount_credited_nusd - deposit.discount_nusd
    return paid * cents // paid_cents, deposit.discount_nusd * cents // paid_cents


def take_back_memo(kind: TransferKind, deposit_id: str) -> str:
    """Every take-back transfer of a deposit carries this memo: how `refunded` is recognised."""
    return f"{kind.value} of deposit {deposit_id}"


def take_back_reversals(deposit: Deposit, series_id: str, kind: TransferKind, cents_upto: int,
                        already: tuple[int, int]) -> dict[str, Reversal]:
    """{"paid"|"discount": reversal} bringing a series (a charge's refunds, a dispute) up to cents_upto.

    `already` is what the series took back before (paid share, discount share);
    a duplicate or an older running total finds nothing left to do.
    """
    assert kind in TAKE_BACK_KINDS, kind
    target = take_back_targets(deposit, cents_upto)
    out = {}
    for share, counter, want, done in (("paid", FUNDING_ACCOUNT, target[0], already[0]),
                                       ("discount", DISCOUNTS_ACCOUNT, target[1], already[1])):
        if want > done:
            out[share] = Reversal(f"{series_id}:{cents_upto}:{share}", deposit.wallet_id, counter, want - done, kind,
                                  memo=take_back_memo(kind, deposit.deposit_id))
    return out


class Payments(Protocol):
    # deposits (rail-agnostic: card and chain deposits share the table)
    async def create_deposit(self, deposit: Deposit) -> None: ...
    async def deposit(self, deposit_id: str) -> Deposit | None: ...
    async def list_deposits(self, wallet_id: str, limit: int, cursor: str | None) -> Page[Deposit]: ...
    async def complete_deposit(self, deposit_id: str, *, payment_ref: str | None = None,
                               customer_ref: str | None = None) -> TransferOutcome: ...  # credits once; DepositNotPending
    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit: ...
    async def deposit_by_ref(self, external_ref: str) -> Deposit | None: ...
    async def deposit_by_payment_ref(self, payment_ref: str) -> Deposit | None: ...
    async def set_deposit_ref(self, deposit_id: str, external_ref: str) -> None: ...
    async def event_seen(self, event_id: str) -> bool: ...
    async def record_event(self, event_id: str, event_type: str) -> None: ...
    async def reverse_deposit_upto(self, deposit_id: str, series_id: str, kind: TransferKind,
                                   cents_upto: int) -> TakeBack: ...
    async def auto_reload(self, wallet_id: str) -> AutoReload | None: ...
    async def enabled_auto_reloads(self) -> list[AutoReload]: ...
    async def set_auto_reload(self, wallet_id: str, enabled: bool, threshold_nusd: int,
                              amount_nusd: int) -> AutoReload: ...
    async def save_payment_method(self, wallet_id: str, customer_ref: str, payment_method_ref: str) -> None: ...
    async def claim_auto_reload(self, wallet_id: str, deposit: Deposit) -> bool: ...
    async def finish_auto_reload(self, wallet_id: str, deposit_id: str, declined_reason: str | None) -> None: ...
    async def add_notification(self, wallet_id: str, kind: str, message: str) -> None: ...
    # keyless purchases
    async def create_keyless(self, deposit: Deposit, recovery_hash: str) -> None: ...  # with its pending deposit
    async def keyless(self, deposit_id: str) -> Keyless | None: ...
    async def claim_keyless_reveal(self, deposit_id: str) -> bool: ...  # True once: the caller makes the keys
    async def set_keyless_keys(self, deposit_id: str, key_id: str, management_key_id: str) -> None: ...
    async def notifications(self, wallet_id: str, limit: int) -> list[Notification]: ...

