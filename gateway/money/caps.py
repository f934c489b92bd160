"""Spend caps on the request path: which caps a request is held against, and keeping their mirrors.

A cap is mirrored in the hold store like a wallet (ledger/caps.py), as an
account under the wallet's own name, so a request's caps and its wallet are
held in one atomic step (HoldStore.reserve with caps: one Lua script in
Redis). The caps of a request:

- its member's monthly limit (issue 8);
- its key's own limits: lifetime, day, month;
- its bot's caps: day, month, and its conversation's (X-Conversation-Id).

Windows are UTC calendar days and months, read from an injectable clock. A
cap the mirror does not know yet, or one that refused and may have been
raised elsewhere, is (re)opened from the book: its row, opened from the usage
of its window when absent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from ledger.api_keys import ApiKeyRecord, SpendLimits
from ledger.caps import CapBalance, CapScope, CapSpec, Window, cap_spec, month_period, subject_prefix
from ledger.holds import HoldStore, cap_account
from ledger.owners import Member
from ledger.store import LedgerStore

# At most one book read per cap per interval when a cap refuses (it may have been raised elsewhere).
CAP_REFRESH_INTERVAL_S = 1.0
CAP_REFRESH_ENTRIES_MAX = 100_000
# How each cap is named to the client in a refusal.
CAP_NAMES = {
    (CapScope.MEMBER, Window.MONTH): "member's monthly spending limit",
    (CapScope.KEY, Window.TOTAL): "key's lifetime spending limit",
    (CapScope.KEY, Window.DAY): "key's daily spending limit",
    (CapScope.KEY, Window.MONTH): "key's monthly spending limit",
    (CapScope.BOT, Window.DAY): "bot's daily spending cap",
    (CapScope.BOT, Window.MONTH): "bot's monthly spending cap",
    (CapScope.CONVERSATION, Window.CONVERSATION): "bot's per-conversation spending cap",
}
# The window markers of cap ids (ledger/caps.py), by which relimit_caps() finds a subject's rows.
_MARKERS = {"total": "total", "day": "d", "month": "m", "conversation": "c"}


def member_cap(member_id: str, now: datetime, limit_nusd: int) -> CapSpec:
    return cap_spec(CapScope.MEMBER, member_id, Window.MONTH, limit_nusd, now)


def cap_name(spec: CapSpec) -> str:
    return CAP_NAMES[(spec.scope, spec.window)]


def caps_of(key: ApiKeyRecord, conversation_id: str | None, now: datetime) -> tuple[CapSpec, ...]:
    """Every cap a request with this key (and conversation) is held against, in the order they are named."""
    caps: list[CapSpec] = []
    if key.member_limit_nusd is not None and key.member_id is not None:
        caps.append(member_cap(key.member_id, now, key.member_limit_nusd))
    if key.limits is not None:
        caps += _windows(CapScope.KEY, key.key_id, key.limits, now)
    rule = key.bot_rule
    if rule is not None:
        caps += _windows(CapScope.BOT, rule.bot_id, rule.caps, now)
        if rule.caps.conversation_nusd is not None and conversation_id is not None:
            caps.append(cap_spec(CapScope.CONVERSATION, rule.bot_id, Window.CONVERSATION, rule.caps.conversation_nusd,
                                 now, conversation_id))
    return tuple(caps)


def _windows(scope: CapScope, subject_id: str, limits: SpendLimits, now: datetime) -> list[CapSpec]:
    # The longest window first: when several refuse, the one named is the one waiting will not fix soonest.
    found = [(Window.TOTAL, limits.total_nusd), (Window.MONTH, limits.month_nusd), (Window.DAY, limits.day_nusd)]
    return [cap_spec(scope, subject_id, window, limit, now) for window, limit in found if limit is not None]


class SpendCaps:
    """Which caps a key's request has, and the book reads that keep their mirrors current."""

    def __init__(self, book: LedgerStore, holds: HoldStore,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._book = book
        self._holds = holds
        self._clock = clock
        self._refreshed_at: dict[str, float] = {}

    def checks(self, key: ApiKeyRecord, conversation_id: str | None = None) -> tuple[CapSpec, ...]:
        """The caps of a request (none for most keys: then no clock is read)."""
        if key.member_limit_nusd is None and key.limits is None and key.bot_rule is None:
            return ()
        return caps_of(key, conversation_id, self._clock())

    async def mirror(self, wallet_id: str, spec: CapSpec) -> None:
        """Open the cap's row (from its window's usage if absent) and tell the hold store."""
        await sync_cap(self._holds, wallet_id, await self._book.open_cap(spec))

    def may_refresh(self, wallet_id: str, cap_id: str) -> bool:
        account = cap_account(wallet_id, cap_id)
        now = time.monotonic()
        if now - self._refreshed_at.get(account, float("-inf")) < CAP_REFRESH_INTERVAL_S:
            return False
        if len(self._refreshed_at) >= CAP_REFRESH_ENTRIES_MAX:
            self._refreshed_at.clear()
        self._refreshed_at[account] = now
        return True


async def sync_cap(holds: HoldStore, wallet_id: str, cap: CapBalance) -> None:
    await holds.sync(cap_account(wallet_id, cap.cap_id), cap.remaining_nusd, cap.version)


async def apply_member_limit(book: LedgerStore, holds: HoldStore, member_id: str, limit_nusd: int | None,
                             now: datetime) -> Member:
    """Set a member's monthly limit and tell the hold store's mirror of this month's cap at once."""
    member, cap = await book.set_member_limit(member_id, limit_nusd, month_period(now))
    if cap is not None:
        await sync_cap(holds, member.wallet_id, cap)
    return member


async def apply_limits(book: LedgerStore, holds: HoldStore, wallet_id: str, scope: CapScope, subject_id: str,
                       limits: SpendLimits) -> None:
    """A key's or a bot's new limits, on every open row of theirs and on the hold store's mirrors at once."""
    given = {"total": limits.total_nusd, "day": limits.day_nusd, "month": limits.month_nusd,
             "conversation": limits.conversation_nusd}
    if scope is CapScope.KEY:
        given.pop("conversation")
    else:
        given.pop("total")
    changed = await book.relimit_caps(subject_prefix(scope, subject_id), {_MARKERS[w]: v for w, v in given.items()})
    for cap in changed:
        await sync_cap(holds, wallet_id, cap)
