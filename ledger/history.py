"""What a wallet's owner reads: its entries (the wallet's side of each transfer) and its figures.

An entry is one transfer that moved the wallet's money, seen from the wallet:
``amount_nusd`` is positive when money came in and negative when it went out.
Its ``kind`` is the transfer kind (mw_transfer_kinds), so a kind added by a
later migration (discount, reward, payout...) shows up without code here.
A usage entry carries the request's usage row, so the API can describe it.

Entries are ordered newest first by (created_at, transfer id). A cursor is
opaque to callers: the ledger encodes it and refuses one it did not make
(ValueError). postgres_history.py and sqlite_history.py implement this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ledger.owners import Page

ENTRIES_LIMIT_MAX = 200  # a page holds 1 to this many entries


@dataclass(frozen=True)
class UsageSummary:
    key_id: str
    model: str
    endpoint: str
    status: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    cost_nusd: int  # what the request cost; the entry's amount is what the wallet paid of it


@dataclass(frozen=True)
class Entry:
    entry_id: str  # the transfer id
    kind: str  # the transfer kind
    amount_nusd: int  # signed: + into the wallet, - out of it
    counterparty: str  # the other account of the transfer
    created_at: str
    posting_id: str | None = None
    request_id: str | None = None
    memo: str | None = None
    usage: UsageSummary | None = None  # for kind "usage"


@dataclass(frozen=True)
class EntryQuery:
    wallet_id: str
    limit: int  # 1 .. ENTRIES_LIMIT_MAX, checked by the caller
    kinds: tuple[str, ...] = ()  # () means every kind
    since: datetime | None = None  # inclusive, timezone-aware
    until: datetime | None = None  # exclusive, timezone-aware
    key_ids: tuple[str, ...] | None = None  # only usage of these keys (a developer's own); None: no filter
    cursor: str | None = None


@dataclass(frozen=True)
class Spend:
    requests: int
    cost_nusd: int  # sum of the usage rows' cost
    charged_nusd: int  # of which the wallet paid


@dataclass(frozen=True)
class WalletFigures:
    """The wallet's lifetime and this month's figures (AISA's balance, amount used, requests)."""

    deposited_nusd: int  # kind deposit into the wallet
    spent_nusd: int  # usage charged to the wallet (net of nothing: refunds are their own figure)
    refunded_nusd: int  # kind refund into the wallet
    requests: int  # usage rows, lifetime
    month: Spend  # since the month start given


class History(Protocol):
    async def entries(self, query: EntryQuery) -> Page[Entry]: ...
    async def transfer_kinds(self) -> dict[str, str]: ...  # every kind the database knows, with its description
    async def wallet_figures(self, wallet_id: str, month_start: datetime) -> WalletFigures: ...
    async def key_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]: ...  # by key id
    async def member_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]: ...  # by member id
