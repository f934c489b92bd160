"""A request's money: hold its worst case, then exactly one of charge or release.

    held = await billing.hold(call, estimate)     # a Hold, or Refused with a reason
    async with held as hold:                      # the one exit of the request's money
        ...
        await hold.charge(record)                 # settled once; else released on the way out

A Hold is closed exactly once. charge() hands the record to the Settler
synchronously (no cancellation can come between) and waits shielded, so a
client that disconnects or a server that shuts down cannot leave a settlement
half-done. Leaving the `async with` without a charge, by any exception or a
cancellation, releases the hold, shielded too. Nothing here knows HTTP: the
HTTP layer maps a Refused reason to a status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from gateway.metering.metering import Estimate
from gateway.money.calls import Call
from gateway.money.caps import SpendCaps
from gateway.money.settlement import SettlementUnavailable, Settler
from ledger.book import SettleOutcome, SettleResult, UsageRecord
from ledger.caps import CapSpec
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldStore, HoldStoreUnavailable, ReserveResult, ReserveStatus, cap_account
from ledger.store import LedgerStore

# Outcomes that mean the request is in the book, as charged and shown.
CHARGED = frozenset({SettleOutcome.SETTLED, SettleOutcome.REPLAY})
# Bounds the memory of when each wallet was last re-read from the book.
REFRESH_ENTRIES_MAX = 100_000


class HoldState(enum.Enum):
    OPEN = "open"  # money is held; the request is in flight
    SETTLED = "settled"  # handed to the Settler: committed, or kept until it can be
    RELEASED = "released"  # nothing charged; the hold released


class Refusal(enum.Enum):
    INSUFFICIENT_FUNDS = "insufficient_funds"  # the wallet cannot cover the worst case
    BUDGET_EXCEEDED = "budget_exceeded"  # a spend cap (a member's, a key's or a bot's) cannot cover it
    SETTLEMENT_BACKLOG = "settlement_backlog"  # too many settlements wait for the ledger
    HOLDS_UNAVAILABLE = "holds_unavailable"  # the hold store cannot be reached
    LEDGER_UNAVAILABLE = "ledger_unavailable"  # the ledger cannot be reached


# Refusals for want of money, where a tighter hold may still fit.
SHORT_OF_MONEY = frozenset({Refusal.INSUFFICIENT_FUNDS, Refusal.BUDGET_EXCEEDED})

@dataclass(frozen=True)
class Refused:
    """No hold was taken, so nothing will be charged."""

    reason: Refusal
    available_nusd: int = 0  # for INSUFFICIENT_FUNDS and BUDGET_EXCEEDED: what the wallet or cap has free
    needed_nusd: int = 0  # ... and what the request may cost
    cap: CapSpec | None = None  # for BUDGET_EXCEEDED: which cap, its window, and when it resets


@dataclass(frozen=True)
class Unsettled:
    """charge() handed the record over but it is not committed yet: show no cost.

    The Settler keeps it (retried, or journaled) and commits it later.
    """

    reason: str


class Hold:
    """Money held for one request: an async context manager, closed exactly once."""

    def __init__(self, billing: Billing, request_id: str, wallet_id: str, amount_nusd: int,
                 caps: tuple[str, ...] = ()) -> None:
        assert amount_nusd >= 0, amount_nusd
        self._billing = billing
        self.request_id = request_id
        self.wallet_id = wallet_id
        self.amount_nusd = amount_nusd
        self.caps = caps  # the spend caps held against too: settled with the wallet
        self.tokens = 0  # what the request was charged for, once charged: its key's tokens per minute count them
        self._state = HoldState.OPEN

    @property
    def state(self) -> HoldState:
        return self._state

    async def __aenter__(self) -> Hold:
        assert self._state is HoldState.OPEN, self
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        # Only an early return or an unexpected error gets here open: never leave money held by it.
        if self._state is HoldState.OPEN:
            await self.release()
        assert self._state is not HoldState.OPEN, self

    async def charge(self, record: UsageRecord) -> SettleResult | Unsettled:
        assert self._state is HoldState.OPEN, self
        assert record.request_id == self.request_id and record.wallet_id == self.wallet_id, (self, record)
        assert record.held_nusd == self.amount_nusd, (self, record)
        if self.caps:
            record = dataclasses.replace(record, caps=self.caps)
        self.tokens = record.prompt_tokens + record.completion_tokens
        self._state = HoldState.SETTLED
        # Once enqueued (synchronously, so no cancellation can come between),
        # the Settler owns the record: committed, or journaled at shutdown.
        future = self._billing.settler.enqueue(record)
        try:
            # Shielded: a cancelled caller stops waiting, never the settlement. The
            # Settler fails the future with SettlementDelayed past settle_wait_max_s
            # (the settlement goes on), so no waiter waits without a bound.
            result = await asyncio.shield(future)
        except SettlementUnavailable as exc:
            return Unsettled(str(exc))
        assert result.request_id == self.request_id, (self, result)
        if result.outcome not in CHARGED:
            return Unsettled(f"the ledger wrote nothing for this request ({result.outcome.value})")
        return result

    async def release(self) -> None:
        if self._state is not HoldState.OPEN:
            return
        self._state = HoldState.RELEASED
        if self.amount_nusd == 0:
            return  # a free call's hold never went to the hold store
        try:
            await asyncio.shield(self._billing.holds.release(self.wallet_id, self.request_id))
            for cap_id in self.caps:
                await asyncio.shield(self._billing.holds.release(cap_account(self.wallet_id, cap_id), self.request_id))
        except HoldStoreUnavailable:
            pass  # the holds expire by themselves after limits.hold_ttl_s

    def __repr__(self) -> str:
        return f"Hold({self.request_id!r}, {self.wallet_id!r}, {self.amount_nusd}, {self._state.value})"


class Billing:
    def __init__(self, book: LedgerStore, holds: HoldStore, settler: Settler, hold_ttl_s: float,
                 refresh_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 caps: SpendCaps | None = None) -> None:
        self._book = book
        self.holds = holds
        self.caps = caps or SpendCaps(book, holds)
        self.settler = settler
        self._hold_ttl_s = hold_ttl_s
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._refreshed_at: dict[str, float] = {}

    async def hold(self, call: Call, estimate: Estimate) -> Hold | Refused:
        """Hold the call's worst case; tokenize for a tighter one only if the wallet is short of it."""
        wallet_id, request_id = call.key.wallet_id, call.request_id
        caps = self.caps.checks(call.key, call.conversation_id)
        held = await self.reserve(wallet_id, request_id, estimate.most_nusd, caps)
        # A refusal must stay cheap: when even the least this request can cost
        # is more than the wallet (or a cap) has, refuse without tokenizing anything.
        if not isinstance(held, Refused) or held.reason not in SHORT_OF_MONEY:
            return held
        least_nusd = estimate.least()
        assert 0 <= least_nusd <= estimate.most_nusd, (least_nusd, estimate)
        if least_nusd <= held.available_nusd:
            # Bounded by limits.tokenize_bytes_max; off the loop all the same.
            tight_nusd = await asyncio.get_running_loop().run_in_executor(None, estimate.tighten)
            assert tight_nusd >= least_nusd, (tight_nusd, least_nusd)
            if tight_nusd < estimate.most_nusd:
                held = await self.reserve(wallet_id, request_id, tight_nusd, caps)
        return held

    async def reserve(self, wallet_id: str, request_id: str, amount_nusd: int,
                      caps: tuple[CapSpec, ...] = ()) -> Hold | Refused:
        """Hold exactly amount_nusd (0: a free call, nothing to hold) on the wallet and each cap, in one step."""
        assert amount_nusd >= 0, amount_nusd
        if amount_nusd == 0:
            return Hold(self, request_id, wallet_id, 0)
        if self.settler.full:
            # The ledger is behind (or down): take no new work whose charge could not be kept.
            return Refused(Refusal.SETTLEMENT_BACKLOG)
        cap_ids = tuple(spec.cap_id for spec in caps)
        try:
            result = await self.holds.reserve(wallet_id, request_id, amount_nusd, self._hold_ttl_s, cap_ids)
            # Each round mirrors one more account from the book: bounded by the accounts there are.
            rounds = 0
            while result.status is not ReserveStatus.RESERVED and rounds <= len(caps):
                if not await self._refreshed(wallet_id, result, caps):
                    break
                rounds += 1
                result = await self.holds.reserve(wallet_id, request_id, amount_nusd, self._hold_ttl_s, cap_ids)
        except HoldStoreUnavailable:
            return Refused(Refusal.HOLDS_UNAVAILABLE)
        except LedgerUnavailable:
            return Refused(Refusal.LEDGER_UNAVAILABLE)
        if result.status is ReserveStatus.RESERVED:
            assert result.available_nusd >= 0, result
            return Hold(self, request_id, wallet_id, amount_nusd, cap_ids)
        if result.cap_id is None:
            return Refused(Refusal.INSUFFICIENT_FUNDS, max(result.available_nusd, 0), amount_nusd)
        [spec] = [c for c in caps if c.cap_id == result.cap_id]
        return Refused(Refusal.BUDGET_EXCEEDED, max(result.available_nusd, 0), amount_nusd, spec)

    async def _refreshed(self, wallet_id: str, result: ReserveResult, caps: tuple[CapSpec, ...]) -> bool:
        """Whether the account that refused (or is unknown) was re-read from the book, so asking again may help.

        Unknown to the mirror, or maybe topped up (or a cap raised) by another
        process: ask the book, at most once per account per refresh interval.
        """
        unknown = result.status is ReserveStatus.WALLET_UNKNOWN
        if result.cap_id is not None:
            if not (unknown or self.caps.may_refresh(wallet_id, result.cap_id)):
                return False
            [spec] = [c for c in caps if c.cap_id == result.cap_id]
            await self.caps.mirror(wallet_id, spec)
            return True
        if not (unknown or self._may_refresh(wallet_id)):
            return False
        wallet = await self._book.wallet(wallet_id)
        if wallet is None:
            return False  # no such wallet: refused as unknown, with nothing available
        await self.holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
        return True

    def _may_refresh(self, wallet_id: str) -> bool:
        """At most one book read per wallet per refresh interval, so refusals stay cheap."""
        now = self._clock()
        if now - self._refreshed_at.get(wallet_id, float("-inf")) < self._refresh_interval_s:
            return False
        if len(self._refreshed_at) >= REFRESH_ENTRIES_MAX:
            self._refreshed_at.clear()
        self._refreshed_at[wallet_id] = now
        return True
