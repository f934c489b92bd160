"""Spend caps: a limit on what some set of requests may cost in a window, kept in the ledger.

A cap row (mw_spend_caps) counts what its requests cost so far (``spent_nusd``)
against an optional ``limit_nusd``. Settlement adds each settled request's cost
to the caps it was held against, in the same transaction as its debit, and
bumps the row's ``version``. The hold store mirrors a cap exactly as it mirrors
a wallet: its "balance" is what the cap has left (limit - spent) and its
version is the row's, so reserving against a cap is the same atomic check
(remaining - active holds >= amount) across processes, with no new script.

Cap ids, one row per subject and window (UTC calendar days and months):

    member:<member id>:<YYYY-MM>          a member's monthly limit
    key:<key id>:total | :d:<YYYY-MM-DD> | :m:<YYYY-MM>     a key's own limits
    bot:<bot id>:d:<YYYY-MM-DD> | :m:<YYYY-MM> | :c:<conversation id>

A row is opened by the first request of its window (open_cap, a CapSpec); it
starts from what its subject's requests already cost in that window, read
from the usage rows, so a limit set mid-window counts the window's earlier
spend, and a mirror lost with Redis is rebuilt from the rows. A conversation
is named by its requests' header, which their usage rows keep.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ledger.money import AMOUNT_NUSD_MAX

# What a cap without a limit has left: as much as any amount can be (exact in Redis's doubles).
UNLIMITED_NUSD = AMOUNT_NUSD_MAX
MEMBER_CAP_PREFIX = "member:"
KEY_CAP_PREFIX = "key:"
BOT_CAP_PREFIX = "bot:"


class CapScope(enum.Enum):
    """Whose requests a cap counts, and so which usage rows open its row."""

    MEMBER = "member"  # the member's keys
    KEY = "key"
    BOT = "bot"  # the bot's keys
    CONVERSATION = "conversation"  # one conversation of a bot: no usage rows to start from


class Window(enum.Enum):
    TOTAL = "total"  # all time
    DAY = "day"  # a UTC calendar day
    MONTH = "month"  # a UTC calendar month
    CONVERSATION = "conversation"


@dataclass(frozen=True)
class CapSpec:
    """One cap a request is held against: its row, whose usage it counts, its limit and window."""

    cap_id: str
    scope: CapScope
    subject_id: str  # the member, key or bot id
    window: Window
    limit_nusd: int  # as read with the key; open_cap() takes the limit from where it is kept
    since: datetime | None  # the window's first instant (None: all time, or a conversation)
    until: datetime | None  # when it resets (None: never)
    conversation_id: str | None = None  # for a conversation's cap

    def __post_init__(self) -> None:
        assert self.limit_nusd >= 0 and (self.since is None) == (self.until is None), self


@dataclass(frozen=True)
class CapBalance:
    """A cap as the hold store mirrors it: what is left, and the row version that says so."""

    cap_id: str
    remaining_nusd: int  # limit - spent; negative once a settled cost went past the limit
    version: int


def remaining(limit_nusd: int | None, spent_nusd: int) -> int:
    if limit_nusd is None:
        return UNLIMITED_NUSD
    return max(limit_nusd - spent_nusd, -AMOUNT_NUSD_MAX)


def month_period(now: datetime) -> str:
    """The UTC calendar month a time falls in: '2026-11'."""
    return now.astimezone(UTC).strftime("%Y-%m")


def period_start(period: str) -> datetime:
    """'2026-11' -> 2026-11-01T00:00:00Z."""
    year, month = period.split("-")
    return datetime(int(year), int(month), 1, tzinfo=UTC)


def next_period_start(period: str) -> datetime:
    """When a monthly cap resets: the first instant of the next UTC month."""
    start = period_start(period)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def member_cap_id(member_id: str, period: str) -> str:
    return f"{MEMBER_CAP_PREFIX}{member_id}:{period}"


def parse_member_cap_id(cap_id: str) -> tuple[str, str]:
    """member:<member id>:<YYYY-MM> -> (member id, period); ValueError for anything else."""
    if not cap_id.startswith(MEMBER_CAP_PREFIX):
        raise ValueError(f"not a member cap: {cap_id!r}")
    member_id, _, period = cap_id[len(MEMBER_CAP_PREFIX):].rpartition(":")
    if not member_id or len(period) != 7:
        raise ValueError(f"not a member cap: {cap_id!r}")
    period_start(period)
    return member_id, period


def day_period(now: datetime) -> str:
    """The UTC calendar day a time falls in: '2026-11-24'."""
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def day_start(period: str) -> datetime:
    return datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC)


def window_bounds(window: Window, now: datetime) -> tuple[str, datetime | None, datetime | None]:
    """(the period in the cap id, since, until) of the window a time falls in."""
    if window is Window.DAY:
        day = day_period(now)
        return day, day_start(day), day_start(day) + timedelta(days=1)
    if window is Window.MONTH:
        month = month_period(now)
        return month, period_start(month), next_period_start(month)
    return "", None, None


def cap_spec(scope: CapScope, subject_id: str, window: Window, limit_nusd: int, now: datetime,
             conversation_id: str | None = None) -> CapSpec:
    """The cap of a subject in the window a time falls in (a conversation's for Window.CONVERSATION)."""
    period, since, until = window_bounds(window, now)
    if scope is CapScope.MEMBER:
        cap_id = member_cap_id(subject_id, period)
    elif window is Window.CONVERSATION:
        assert scope is CapScope.CONVERSATION and conversation_id, (scope, conversation_id)
        cap_id = f"{BOT_CAP_PREFIX}{subject_id}:c:{conversation_id}"
    else:
        prefix = KEY_CAP_PREFIX if scope is CapScope.KEY else BOT_CAP_PREFIX
        cap_id = f"{prefix}{subject_id}:" + ("total" if window is Window.TOTAL else f"{window.value[0]}:{period}")
    return CapSpec(cap_id, scope, subject_id, window, limit_nusd, since, until, conversation_id)


def subject_prefix(scope: CapScope, subject_id: str) -> str:
    """What every cap id of a key or a bot starts with: a limit change rewrites those rows."""
    assert scope in (CapScope.KEY, CapScope.BOT), scope
    return f"{KEY_CAP_PREFIX if scope is CapScope.KEY else BOT_CAP_PREFIX}{subject_id}:"
