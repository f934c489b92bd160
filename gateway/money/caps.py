"""Spend caps on the request path: which caps a key's request is held against, and holding them.

A cap is mirrored in the hold store like a wallet (ledger/caps.py), so holding
against it is the same atomic check across processes. A request is held
against its caps first and its wallet last; if anything refuses, what was held
is released, so a refused request holds nothing. The first cap is a member's
monthly limit; a key of a member with no limit has no caps and costs nothing here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.book import ApiKeyRecord
from ledger.caps import CapBalance, member_cap_id, month_period, next_period_start
from ledger.holds import HoldStore, ReserveStatus
from ledger.owners import Member
from ledger.store import LedgerStore

# At most one book read per cap per interval when a cap refuses (it may have been raised elsewhere).
CAP_REFRESH_INTERVAL_S = 1.0
CAP_REFRESH_ENTRIES_MAX = 100_000


@dataclass(frozen=True)
class CapCheck:
    """One cap a request must fit in, as the error names it."""

    cap_id: str
    member_id: str
    period: str  # "2026-11"
    resets_at: datetime  # the first instant of the next UTC month
    window: str = "month"


def member_cap(member_id: str, now: datetime) -> CapCheck:
    period = month_period(now)
    return CapCheck(member_cap_id(member_id, period), member_id, period, next_period_start(period))


class SpendCaps:
    def __init__(self, book: LedgerStore, holds: HoldStore, hold_ttl_s: float) -> None:
        self._book = book
        self._holds = holds
        self._hold_ttl_s = hold_ttl_s
        self._refreshed_at: dict[str, float] = {}

    @staticmethod
    def checks(key: ApiKeyRecord) -> tuple[CapCheck, ...]:
        """The caps a request with this key is held against (none for most keys: no clock read)."""
        if key.member_limit_nusd is None or key.member_id is None:
            return ()
        return (member_cap(key.member_id, datetime.now(UTC)),)

    async def reserve(self, caps: tuple[CapCheck, ...], hold_id: str, amount_nusd: int) -> tuple[CapCheck, int] | None:
        """Hold amount_nusd against every cap, or none of them: the refusing cap and what it had left."""
        held: list[CapCheck] = []
        try:
            for check in caps:
                refused_with = await self._reserve_one(check, hold_id, amount_nusd)
                if refused_with is not None:
                    await self.release(tuple(held), hold_id)
                    return check, refused_with
                held.append(check)
        except BaseException:
            await self.release(tuple(held), hold_id)
            raise
        return None

    async def release(self, caps: tuple[CapCheck, ...], hold_id: str) -> None:
        for check in caps:
            await self._holds.release(check.cap_id, hold_id)

    async def _reserve_one(self, check: CapCheck, hold_id: str, amount_nusd: int) -> int | None:
        """None when held; else what the cap has left."""
        result = await self._holds.reserve(check.cap_id, hold_id, amount_nusd, self._hold_ttl_s)
        if result.status is ReserveStatus.WALLET_UNKNOWN or (
                result.status is ReserveStatus.INSUFFICIENT and self._may_refresh(check.cap_id)):
            cap = await self._book.open_member_cap(check.member_id, check.period)
            if cap is None:
                return None  # the limit was removed since the key was read: nothing to hold against
            await self._holds.sync(cap.cap_id, cap.remaining_nusd, cap.version)
            result = await self._holds.reserve(check.cap_id, hold_id, amount_nusd, self._hold_ttl_s)
        if result.status is ReserveStatus.RESERVED:
            return None
        return result.available_nusd

    def _may_refresh(self, cap_id: str) -> bool:
        now = time.monotonic()
        if now - self._refreshed_at.get(cap_id, float("-inf")) < CAP_REFRESH_INTERVAL_S:
            return False
        if len(self._refreshed_at) >= CAP_REFRESH_ENTRIES_MAX:
            self._refreshed_at.clear()
        self._refreshed_at[cap_id] = now
        return True


async def apply_member_limit(book: LedgerStore, holds: HoldStore, member_id: str, limit_nusd: int | None,
                             now: datetime) -> Member:
    """Set a member's monthly limit and tell the hold store's mirror of this month's cap at once.

    Keys read before the change carry the old limit only until the key cache
    expires (limits.key_cache_ttl_s); the cap row itself changes now, for every process.
    """
    member, cap = await book.set_member_limit(member_id, limit_nusd, month_period(now))
    if cap is not None:
        await sync_cap(holds, cap)
    return member


async def sync_cap(holds: HoldStore, cap: CapBalance) -> None:
    await holds.sync(cap.cap_id, cap.remaining_nusd, cap.version)
