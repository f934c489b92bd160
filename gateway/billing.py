"""A request's money from start to end: reserve, then exactly one of settle or release.

A Hold is taken before forwarding and closed exactly once. close() is shielded
from cancellation, so a client that disconnects or a server that shuts down
while the settlement is being written cannot leave it half-done.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.errors import ApiError, service_unavailable
from gateway.settlement import Settler
from ledger.book import Book, SettleResult, UsageRecord
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldStore, HoldStoreUnavailable, ReserveStatus

# Bounds the memory of when each wallet was last re-read from the book.
REFRESH_ENTRIES_MAX = 100_000


class HoldState(enum.Enum):
    OPEN = "open"  # money is held; the request is in flight
    SETTLED = "settled"  # the debit is committed and the hold released
    RELEASED = "released"  # nothing charged; the hold released


@dataclass
class Hold:
    request_id: str
    wallet_id: str
    amount_nusd: int
    state: HoldState = HoldState.OPEN


@dataclass(frozen=True)
class Shortage:
    """The wallet cannot cover the worst case of this request."""

    available_nusd: int
    needed_nusd: int


class Billing:
    def __init__(self, book: Book, holds: HoldStore, settler: Settler, hold_ttl_s: float,
                 refresh_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._book = book
        self._holds = holds
        self._settler = settler
        self._hold_ttl_s = hold_ttl_s
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._refreshed_at: dict[str, float] = {}

    async def reserve(self, wallet_id: str, request_id: str, amount_nusd: int) -> Hold | Shortage | ApiError:
        assert amount_nusd > 0, amount_nusd
        if self._settler.full:
            # The ledger is behind (or down): take no new work whose charge could not be kept.
            return service_unavailable("Too many settlements are waiting for the ledger; nothing was charged. "
                                       "Retry shortly.", "settlement_backlog")
        try:
            result = await self._holds.reserve(wallet_id, request_id, amount_nusd, self._hold_ttl_s)
            if result.status is ReserveStatus.WALLET_UNKNOWN or (
                result.status is ReserveStatus.INSUFFICIENT and self._may_refresh(wallet_id)
            ):
                # Unknown to the mirror, or maybe topped up by another process
                # (the CLI, an admin call elsewhere): ask the book, then retry once.
                wallet = await self._book.wallet(wallet_id)
                if wallet is None:
                    return Shortage(0, amount_nusd)
                await self._holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
                result = await self._holds.reserve(wallet_id, request_id, amount_nusd, self._hold_ttl_s)
        except HoldStoreUnavailable:
            return service_unavailable("The hold store is unavailable; nothing was charged. Retry shortly.", "holds_unavailable")
        except LedgerUnavailable:
            return service_unavailable("The ledger is unavailable; nothing was charged. Retry shortly.", "ledger_unavailable")
        if result.status is ReserveStatus.RESERVED:
            return Hold(request_id, wallet_id, amount_nusd)
        return Shortage(max(result.available_nusd, 0), amount_nusd)

    def _may_refresh(self, wallet_id: str) -> bool:
        """At most one book read per wallet per refresh interval, so refusals stay cheap."""
        now = self._clock()
        if now - self._refreshed_at.get(wallet_id, float("-inf")) < self._refresh_interval_s:
            return False
        if len(self._refreshed_at) >= REFRESH_ENTRIES_MAX:
            self._refreshed_at.clear()
        self._refreshed_at[wallet_id] = now
        return True

    async def settle(self, hold: Hold, record: UsageRecord) -> SettleResult:
        assert hold.state is HoldState.OPEN, hold
        assert record.request_id == hold.request_id and record.wallet_id == hold.wallet_id, (hold, record)
        hold.state = HoldState.SETTLED
        # Once enqueued (synchronously, so no cancellation can come between),
        # the Settler owns the record: committed, or journaled at shutdown.
        future = self._settler.enqueue(record)
        # Shielded: a cancelled caller stops waiting, never the settlement. The
        # Settler fails the future with SettlementDelayed past settle_wait_max_s
        # (the settlement goes on), so no waiter waits without a bound.
        return await asyncio.shield(future)

    async def release(self, hold: Hold) -> None:
        if hold.state is not HoldState.OPEN:
            return
        hold.state = HoldState.RELEASED
        if hold.amount_nusd == 0:
            return  # a free call's hold never went to the hold store
        try:
            await asyncio.shield(self._holds.release(hold.wallet_id, hold.request_id))
        except HoldStoreUnavailable:
            pass  # the hold expires by itself after limits.hold_ttl_s
