"""Spend caps: a limit on what some set of requests may cost in a window, kept in the ledger.

A cap row (mw_spend_caps) counts what its requests cost so far (``spent_nusd``)
against an optional ``limit_nusd``. Settlement adds each settled request's cost
to the caps it was held against, in the same transaction as its debit, and
bumps the row's ``version``. The hold store mirrors a cap exactly as it mirrors
a wallet: its "balance" is what the cap has left (limit - spent) and its
version is the row's, so reserving against a cap is the same atomic check
(remaining - active holds >= amount) across processes, with no new script.

The first cap is a member's monthly limit: id ``member:<member id>:<YYYY-MM>``
(UTC calendar month). A row is opened by the first request of its window; it
starts from what the member's keys already cost in that window, so setting a
limit mid-month counts the month's earlier spend. Caps of later issues (per
bot, per key, per conversation) are more rows of the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ledger.money import AMOUNT_NUSD_MAX

# What a cap without a limit has left: as much as any amount can be (exact in Redis's doubles).
UNLIMITED_NUSD = AMOUNT_NUSD_MAX
MEMBER_CAP_PREFIX = "member:"


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
