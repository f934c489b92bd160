"""The durable book: what both backends (SQLite, Postgres) promise.

A wallet is an account whose balance may not go below zero. Money enters from
``sys:funding`` (deposits, operator credits), leaves wallets to ``sys:revenue``
when a request is settled, and any part of a request's cost that the wallet
could not cover is recorded as a transfer from ``sys:shortfall``, never as a
negative wallet. Every transfer id is an idempotency key.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

from ledger.errors import NotAWallet
from ledger.money import AMOUNT_NUSD_MAX

REVENUE_ACCOUNT = "sys:revenue"
FUNDING_ACCOUNT = "sys:funding"
SHORTFALL_ACCOUNT = "sys:shortfall"
SYSTEM_ACCOUNTS = (REVENUE_ACCOUNT, FUNDING_ACCOUNT, SHORTFALL_ACCOUNT)
WALLET_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class TransferKind(str, enum.Enum):
    DEPOSIT = "deposit"  # money paid in from outside (card, chain)
    ADJUSTMENT = "adjustment"  # an operator's manual credit or debit
    USAGE = "usage"  # a settled request
    SHORTFALL = "shortfall"  # the part of a request's cost no wallet paid


class TransferOutcome(str, enum.Enum):
    CREATED = "created"  # written now
    EXISTS = "exists"  # the same transfer was written before: success, nothing changed


class SettleOutcome(str, enum.Enum):
    SETTLED = "settled"  # written now
    REPLAY = "replay"  # settled before with the same cost: the first result
    CONFLICT = "conflict"  # settled before with a different cost or wallet: nothing changed
    UNKNOWN_WALLET = "unknown_wallet"  # nothing written


@dataclass(frozen=True)
class Wallet:
    wallet_id: str
    name: str | None
    balance_nusd: int
    version: int  # bumped by every balance change; orders mirrors (see ledger/holds.py)


@dataclass(frozen=True)
class Transfer:
    transfer_id: str
    debit_account: str  # money leaves this account
    credit_account: str  # money arrives here
    amount_nusd: int
    kind: TransferKind
    request_id: str | None = None
    memo: str | None = None

    def __post_init__(self) -> None:
        assert isinstance(self.amount_nusd, int), self.amount_nusd
        if not 0 < self.amount_nusd <= AMOUNT_NUSD_MAX:
            raise ValueError(f"transfer amount must be positive and at most {AMOUNT_NUSD_MAX} nUSD")
        if self.debit_account == self.credit_account:
            raise ValueError("a transfer needs two different accounts")


@dataclass(frozen=True)
class TransferRecord:
    transfer: Transfer
    created_at: str


@dataclass(frozen=True)
class UsageRecord:
    """One request's outcome, written atomically with its debit."""

    request_id: str
    key_id: str
    wallet_id: str
    bot: str | None
    model: str
    upstream: str
    endpoint: str
    status: str  # "ok", "partial", "upstream_error", "client_closed", ...
    usage_source: str  # "upstream", "tokenizer", "none"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    input_per_1m_nusd: int
    cached_input_per_1m_nusd: int
    output_per_1m_nusd: int
    per_call_nusd: int
    cost_nusd: int
    held_nusd: int
    latency_ms: float
    upstream_latency_ms: float

    def __post_init__(self) -> None:
        assert self.cost_nusd >= 0 and self.held_nusd >= 0, self
        assert self.cost_nusd <= AMOUNT_NUSD_MAX, self

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in _USAGE_FIELDS}


_USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))


@dataclass(frozen=True)
class SettleResult:
    request_id: str
    outcome: SettleOutcome
    charged_nusd: int
    shortfall_nusd: int
    balance_nusd: int  # the wallet's balance after this settlement (for the hold mirror)
    version: int

    def __post_init__(self) -> None:
        assert self.charged_nusd >= 0 and self.shortfall_nusd >= 0, self


@dataclass(frozen=True)
class SettledUsage:
    record: UsageRecord
    charged_nusd: int
    shortfall_nusd: int
    created_at: str


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    secret_hash: str
    prefix: str  # the first characters of the secret, safe to show
    wallet_id: str
    name: str | None
    bot: str | None
    created_at: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class LedgerTotals:
    """Facts that must hold at any quiet moment; see check_invariants()."""

    balance_sum_nusd: int  # sum of all balances: zero in double entry
    negative_wallets: int
    transfer_count: int
    revenue_nusd: int
    shortfall_nusd: int
    funding_nusd: int
    usage_charged_nusd: int  # sum of charged over the usage log
    usage_shortfall_nusd: int
    balance_mismatches: int  # accounts whose stored balance differs from their transfers


def check_invariants(totals: LedgerTotals) -> None:
    assert totals.balance_sum_nusd == 0, totals
    assert totals.negative_wallets == 0, totals
    assert totals.balance_mismatches == 0, totals
    assert totals.revenue_nusd == totals.usage_charged_nusd + totals.usage_shortfall_nusd, totals
    assert -totals.shortfall_nusd == totals.usage_shortfall_nusd, totals


# Money from outside (deposits, operator adjustments) lands in a wallet; an
# adjustment may also return money to sys:funding (an operator's debit). Never
# into sys:revenue or sys:shortfall: revenue = charged + shortfall must hold.
FUNDING_KINDS = frozenset({TransferKind.DEPOSIT, TransferKind.ADJUSTMENT})
FUNDING_CREDIT_ACCOUNT_KINDS = frozenset({"wallet", "funding"})


def check_funding_credit(transfer: Transfer, credit_account_kind: str) -> None:
    """Refuse a deposit or adjustment into a system account other than sys:funding.

    Both books call this inside the transfer's own transaction, with the
    credited account's kind as read there, so a refused transfer is rolled back.
    """
    if transfer.kind in FUNDING_KINDS and credit_account_kind not in FUNDING_CREDIT_ACCOUNT_KINDS:
        raise NotAWallet(f"{transfer.credit_account!r} is a system account, not a wallet: "
                         f"{transfer.kind.value} transfers credit wallets only")


def validate_wallet_id(wallet_id: str) -> None:
    if not WALLET_ID_PATTERN.match(wallet_id):
        raise ValueError("wallet id: 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or digit")


def migration_files(dialect: str) -> list[tuple[int, str]]:
    """(version, sql) pairs in order, from ledger/migrations/<dialect>/NNNN_name.sql."""
    found = []
    for path in sorted((MIGRATIONS_DIR / dialect).glob("*.sql")):
        found.append((int(path.name.split("_", 1)[0]), path.read_text()))
    versions = [v for v, _ in found]
    assert versions == sorted(set(versions)), f"duplicate migration versions: {versions}"
    return found


class Book(Protocol):
    async def migrate(self) -> list[int]: ...  # the versions applied now
    async def pending_migrations(self) -> list[int]: ...  # the versions migrate() would apply
    async def create_wallet(self, wallet_id: str, name: str | None = None) -> Wallet: ...
    async def wallet(self, wallet_id: str) -> Wallet | None: ...
    async def transfer(self, transfer: Transfer) -> TransferOutcome: ...
    async def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]: ...
    async def usage(self, request_id: str) -> SettledUsage | None: ...
    async def transfers_of(self, account_id: str, limit: int = 50) -> list[TransferRecord]: ...
    async def create_key(self, key: ApiKeyRecord) -> None: ...
    async def key_by_hash(self, secret_hash: str) -> ApiKeyRecord | None: ...
    async def list_keys(self, wallet_id: str | None = None) -> list[ApiKeyRecord]: ...
    async def revoke_key(self, key_id: str) -> bool: ...
    async def totals(self) -> LedgerTotals: ...
    async def ping(self) -> None:
        """A cheap round trip (readiness); raises LedgerUnavailable when the database cannot answer."""
    async def close(self) -> None: ...
