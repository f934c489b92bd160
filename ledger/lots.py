"""Credit validity: purchased credit that expires (issue 9), as pure rules both books share.

A lot is credit that came in with an expiry date (a card top-up while
``[topup] credit_validity_days`` is set). A wallet's balance is its open lots'
remaining amounts plus non-expiring money (every credit that opened no lot:
operator credits, refunds of failed requests, rewards). Spending takes the lots
that expire soonest first and non-expiring money last. What is left of a lot at
its expiry leaves the wallet by one posting ``expiry:<lot>`` (wallet ->
sys:funding, kind expiry), written at most once.

Nothing here runs on the settlement path. Consumption is computed lazily, and
exactly, by a reconcile under the wallet's row lock (or in one read snapshot):

- A checkpoint per wallet holds, as of its last reconcile: the balance, the
  wallet's version (every transfer row touching an account bumps its version
  by one, so versions count transfers), and the gross debits of the wallet
  (excluding its own expiry postings), over its whole history and over a
  recent tail (created_at >= tail_start).
- Lots are opened only by open_lot(), which reconciles first. So between two
  reconciles no lot opens, and lots only shrink: the debits D of that window
  consume exactly min(D, open lots) soonest-expiry first, whatever the order of
  the window's credits and debits (a debit never overdraws, so each one takes
  lots before non-expiring money, and lots cannot grow back). Credits of the
  window are non-expiring money.
- D comes from the tail: the tail's debits now minus at the checkpoint. The
  tail covers every new transfer exactly when its count grew as much as the
  wallet's version did; otherwise (a transaction older than the tail margin
  committed since, or the clock went back) D comes from the whole-history sums,
  still exact, just slower.

A hold is not spent (holds live in Redis, not in transfers); a reversal that
takes money back debits the wallet and consumes like any other debit; a refund
into the wallet is non-expiring money.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import NamedTuple, Protocol

from ledger.book import Posting, TransferOutcome
from ledger.errors import LedgerError

LOT_ID_MAX = 128
# The tail a reconcile scans starts this long before the previous reconcile. A
# ledger transaction lasts milliseconds; one that outlives this margin only
# sends the next reconcile to the whole-history sums, never to a wrong answer.
TAIL_MARGIN_S = 600
EXPIRE_BATCH_MAX = 1000  # lots per expire_lots() call, at most


class LotConflict(LedgerError):
    """A lot id already names a different lot, or the credit cannot fund the lot."""

    code = "lot_conflict"


@dataclass(frozen=True)
class Lot:
    lot_id: str
    wallet_id: str
    amount_nusd: int  # credited with an expiry
    remaining_nusd: int  # not yet spent (as of the reconcile that produced this value)
    expires_at: str  # ISO 8601 UTC text (ledger/times.py)
    opened_at: str
    expired_nusd: int | None = None  # what its expiry posting took; None while open
    closed_at: str | None = None

    def __post_init__(self) -> None:
        assert 0 <= self.remaining_nusd <= self.amount_nusd, self


@dataclass(frozen=True)
class ExpiredLot:
    lot_id: str
    wallet_id: str
    amount_nusd: int  # what left the wallet now (> 0)
    expires_at: str
    posting_id: str  # expiry:<lot id>


class NextExpiry(NamedTuple):
    amount_nusd: int  # what expires at expires_at, if nothing of it is spent before
    expires_at: str


@dataclass(frozen=True)
class Checkpoint:
    wallet_id: str
    balance_nusd: int
    version: int
    tail_start: str  # ISO 8601 UTC text
    tail_count: int  # transfers touching the wallet with created_at >= tail_start
    tail_debits_nusd: int  # their debits of the wallet (expiry postings excluded)
    cum_debits_nusd: int  # the same debits over the wallet's whole history


@dataclass(frozen=True)
class TailNow:
    """What the database holds now, read in the same snapshot as the balance and version."""

    balance_nusd: int
    version: int
    old_count: int  # over the checkpoint's tail
    old_debits_nusd: int
    new_start: str  # the next checkpoint's tail
    new_count: int
    new_debits_nusd: int


def expiry_posting_id(lot_id: str) -> str:
    return f"expiry:{lot_id}"


def validate_lot(lot_id: str, amount_nusd: int) -> None:
    if not 0 < len(lot_id) <= LOT_ID_MAX:
        raise ValueError(f"a lot id has 1 to {LOT_ID_MAX} characters")
    assert isinstance(amount_nusd, int), amount_nusd
    if amount_nusd <= 0:
        raise ValueError("a lot's amount is positive")


def tail_covers_window(checkpoint: Checkpoint, now: TailNow) -> bool:
    """True when every transfer since the checkpoint is in its tail (counted by versions)."""
    return now.old_count - checkpoint.tail_count == now.version - checkpoint.version


def window_debits(checkpoint: Checkpoint, now: TailNow, cum_debits_nusd: int | None) -> int:
    """The wallet's gross debits since the checkpoint; cum_debits_nusd is needed only when the tail misses some."""
    if tail_covers_window(checkpoint, now):
        debits = now.old_debits_nusd - checkpoint.tail_debits_nusd
    else:
        assert cum_debits_nusd is not None, "the tail missed transfers: the whole-history sum is needed"
        debits = cum_debits_nusd - checkpoint.cum_debits_nusd
    assert debits >= 0, (checkpoint, now, cum_debits_nusd)
    return debits


def consume(lots: Sequence[Lot], debits_nusd: int) -> list[Lot]:
    """Take debits_nusd from the open lots, soonest expiry first (ties by lot id); the rest is not theirs."""
    left = debits_nusd
    result = []
    for lot in sorted(lots, key=_soonest):
        take = min(left, lot.remaining_nusd) if lot.closed_at is None else 0
        left -= take
        result.append(replace(lot, remaining_nusd=lot.remaining_nusd - take) if take else lot)
    return result


def _soonest(lot: Lot) -> tuple[str, str]:
    return lot.expires_at, lot.lot_id


def reconcile(checkpoint: Checkpoint, lots: Sequence[Lot], now: TailNow, cum_debits_nusd: int | None) -> tuple[Checkpoint, list[Lot]]:
    """The checkpoint and lots as of now: the window's debits consumed, the tail moved on."""
    debits = window_debits(checkpoint, now, cum_debits_nusd)
    after = consume(lots, debits)
    open_sum = sum(lot.remaining_nusd for lot in after if lot.closed_at is None)
    # The rule that keeps expiry from ever overdrawing a wallet: lots are part of the balance.
    assert open_sum <= now.balance_nusd, (checkpoint, now, after)
    moved = Checkpoint(checkpoint.wallet_id, now.balance_nusd, now.version, now.new_start, now.new_count,
                       now.new_debits_nusd, checkpoint.cum_debits_nusd + debits)
    return moved, after


def non_expiring_nusd(balance_nusd: int, lots: Sequence[Lot]) -> int:
    free = balance_nusd - sum(lot.remaining_nusd for lot in lots if lot.closed_at is None)
    assert free >= 0, (balance_nusd, lots)
    return free


def after_expiries(checkpoint: Checkpoint, expired: Sequence[ExpiredLot]) -> Checkpoint:
    """The checkpoint once expiry postings (one transfer each, inside the tail) are written."""
    total = sum(e.amount_nusd for e in expired)
    return replace(checkpoint, balance_nusd=checkpoint.balance_nusd - total, version=checkpoint.version + len(expired),
                   tail_count=checkpoint.tail_count + len(expired))


def next_expiry(lots: Sequence[Lot]) -> NextExpiry | None:
    """The soonest expiry among open lots with money left, and how much expires then."""
    live = [lot for lot in lots if lot.closed_at is None and lot.remaining_nusd > 0]
    if not live:
        return None
    soonest = min(lot.expires_at for lot in live)
    return NextExpiry(sum(lot.remaining_nusd for lot in live if lot.expires_at == soonest), soonest)


class CreditLots(Protocol):
    async def add_lot(self, posting: Posting, wallet_id: str, lot_id: str, expires_at: datetime) -> TransferOutcome:
        """Write the crediting posting and open a lot of its net credit to the wallet, in one transaction."""
    async def lots(self, wallet_id: str) -> list[Lot]: ...  # reconciled as of now (read only), soonest first
    async def next_expiry(self, wallet_id: str) -> NextExpiry | None: ...  # reconciled as of now (read only)
    async def reconcile_lots(self, wallet_id: str) -> list[Lot]: ...  # the same, kept: later reads scan less
    async def expire_lots(self, now: datetime, batch_max: int = EXPIRE_BATCH_MAX) -> list[ExpiredLot]: ...
