"""The durable book: what both backends (SQLite, Postgres) promise.

A wallet is an account whose balance may not go below zero. Money enters from ``sys:funding``
(deposits, operator credits), leaves wallets to ``sys:revenue`` when a request is settled, and
any part of a request's cost that the wallet could not cover is recorded as a transfer from
``sys:shortfall``, never as a negative wallet. Every transfer id is an idempotency key.

Kinds of accounts and transfers are data (mw_account_kinds, mw_transfer_kinds,
migration 0002): the database is the authority on which exist, and a new kind is
a one-row migration. Python names only the kinds it uses.

A posting is several two-leg transfers sharing a posting id, written in one
transaction, all or nothing (TigerBeetle's linked transfers): every row balances
by construction, so every posting does too.
"""

from __future__ import annotations

import enum
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

from ledger.api_keys import ApiKeyRecord as ApiKeyRecord  # re-exported: where keys were always found
from ledger.caps import CapBalance
from ledger.money import AMOUNT_NUSD_MAX

REVENUE_ACCOUNT = "sys:revenue"
FUNDING_ACCOUNT = "sys:funding"
SHORTFALL_ACCOUNT = "sys:shortfall"
DISCOUNTS_ACCOUNT = "sys:discounts"  # pays top-up discounts (migration 0004, ledger/payments.py)
FEES_ACCOUNT = "sys:fees"  # receives BYOK fees (migration 0009, gateway/money/byok.py)
SYSTEM_ACCOUNTS = (REVENUE_ACCOUNT, FUNDING_ACCOUNT, SHORTFALL_ACCOUNT, DISCOUNTS_ACCOUNT, FEES_ACCOUNT)
WALLET_KIND = "wallet"  # an account kind (mw_account_kinds): may not go negative
RECEIVABLE_KIND = "receivable"  # what a wallet owes after a reversal it could not pay
RECEIVABLE_PREFIX = "recv:"  # recv:<wallet id>; ':' is not allowed in a wallet id, so no clash
POSTING_LEGS_MAX = 16  # a posting is a handful of legs, never an unbounded batch
PAYEES_MAX = 8  # who shares one request's cost (revenue, fees, creators)
WALLET_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


class TransferKind(str, enum.Enum):
    DEPOSIT = "deposit"  # money paid in from outside (card, chain)
    ADJUSTMENT = "adjustment"  # an operator's manual credit or debit
    USAGE = "usage"  # a settled request
    SHORTFALL = "shortfall"  # the part of a request's cost no wallet paid
    PAYMENT = "payment"  # a wallet pays others (a creator, a platform fee): a multi-leg posting
    REVERSAL = "reversal"  # money taken back (refund, chargeback, reorg, clawback); the rest is owed
    REFUND = "refund"  # money returned TO a wallet, e.g. a failed request's charge (migration 0003)
    DISCOUNT = "discount"  # the part of a discounted top-up nobody paid: sys:discounts -> wallet (migration 0003)
    CARD_REFUND = "card_refund"  # a card payment refunded: its credit taken back out (migration 0004)
    CHARGEBACK = "chargeback"  # a card payment disputed: its credit taken back out (migration 0004)
    EXPIRY = "expiry"  # prepaid credit that expired unused: wallet -> sys:funding (ledger/lots.py, migration 0003)


# Written only by settle_batch, so the usage log and these transfers always agree.
SETTLE_KINDS = frozenset({TransferKind.USAGE, TransferKind.SHORTFALL})


class TransferOutcome(str, enum.Enum):
    CREATED = "created"  # written now
    EXISTS = "exists"  # the same transfer was written before: success, nothing changed


class SettleOutcome(str, enum.Enum):
    SETTLED = "settled"  # written now
    REPLAY = "replay"  # settled before with the same cost: the first result
    CONFLICT = "conflict"  # settled before with a different cost or wallet: nothing changed
    UNKNOWN_WALLET = "unknown_wallet"  # nothing written
    UNKNOWN_PAYEE = "unknown_payee"  # a payee account does not exist (a pricing bug): nothing written


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
    posting_id: str | None = None  # the posting this transfer is a leg of


@dataclass(frozen=True)
class Leg:
    debit_account: str
    credit_account: str
    amount_nusd: int


@dataclass(frozen=True)
class Posting:
    """Several transfers, one atomic and idempotent unit: all legs or none.

    Leg i is stored as transfer ``posting_id`` (i = 0) or ``posting_id:i``, so a
    one-leg posting is exactly today's transfer; a retry with the same content
    answers EXISTS, with different content IdempotencyConflict.
    """

    posting_id: str
    kind: TransferKind
    legs: tuple[Leg, ...]
    memo: str | None = None
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.kind in SETTLE_KINDS:
            raise ValueError("usage and shortfall transfers are written by settle_batch only (mw_usage tells their story)")
        if not 1 <= len(self.legs) <= POSTING_LEGS_MAX:
            raise ValueError(f"a posting has 1 to {POSTING_LEGS_MAX} legs")
        self.transfers()  # validates every leg (positive, two accounts)

    def transfers(self) -> tuple[Transfer, ...]:
        return tuple(
            Transfer(leg_transfer_id(self.posting_id, index), leg.debit_account, leg.credit_account,
                     leg.amount_nusd, self.kind, self.request_id, self.memo)
            for index, leg in enumerate(self.legs)
        )


def leg_transfer_id(posting_id: str, index: int) -> str:
    return posting_id if index == 0 else f"{posting_id}:{index}"


@dataclass(frozen=True)
class Reversal:
    """Take back up to amount_nusd from a wallet to counter_account; record the rest as owed.

    The counter account always receives the whole amount: what the wallet has
    (taken), and the rest from the wallet's receivable account recv:<wallet>
    (owed), whose negative balance is what the wallet owes. Idempotent by id.
    """

    reversal_id: str
    account_id: str
    counter_account: str
    amount_nusd: int
    kind: TransferKind = TransferKind.REVERSAL
    memo: str | None = None

    def __post_init__(self) -> None:
        Transfer(self.reversal_id, self.account_id, self.counter_account, self.amount_nusd, self.kind)
        if self.kind in SETTLE_KINDS:
            raise ValueError("a reversal is not a settlement: use a reversal kind")


@dataclass(frozen=True)
class ReversalResult:
    taken_nusd: int
    owed_nusd: int
    outcome: TransferOutcome

    def __post_init__(self) -> None:
        assert self.taken_nusd >= 0 and self.owed_nusd >= 0, self


@dataclass(frozen=True)
class Payee:
    """Who receives what part of a request's cost (a pricing decision)."""

    account_id: str
    amount_nusd: int

    def __post_init__(self) -> None:
        assert isinstance(self.amount_nusd, int) and 0 < self.amount_nusd <= AMOUNT_NUSD_MAX, self


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
    # Who receives cost_nusd, filled in order (wallet money, then sys:shortfall); (): all to sys:revenue.
    payees: tuple[Payee, ...] = ()
    # The spend caps (ledger/caps.py) this request was held against: settling adds its cost to each.
    caps: tuple[str, ...] = ()
    # What the provider's price list says the call cost; cost_nusd is what the wallet pays: the same
    # for a plain call, the BYOK fee (or 0) when byok (forwarded with the caller's own provider key).
    provider_cost_nusd: int | None = None
    byok: bool = False
    price_version: str | None = None  # the catalogue's version it was priced by (ledger/prices.py)
    conversation_id: str | None = None  # X-Conversation-Id: what a bot's per-conversation cap counts

    def __post_init__(self) -> None:
        assert self.cost_nusd >= 0 and self.held_nusd >= 0, self
        if type(self.caps) is not tuple:
            object.__setattr__(self, "caps", tuple(self.caps))  # from JSON (the journal)
        assert self.cost_nusd <= AMOUNT_NUSD_MAX, self
        payees = self.payees
        if type(payees) is not tuple or not all(type(p) is Payee for p in payees):
            payees = tuple(_payee(p) for p in payees)  # from JSON (the journal) or a list
        if not payees and self.cost_nusd > 0:
            payees = (Payee(REVENUE_ACCOUNT, self.cost_nusd),)
        if payees is not self.payees:
            object.__setattr__(self, "payees", payees)
        if len(payees) == 1:  # the usual case, checked without building a list and a set
            assert payees[0].amount_nusd == self.cost_nusd and payees[0].account_id != self.wallet_id, self
            return
        assert len(payees) <= PAYEES_MAX, self
        assert sum(p.amount_nusd for p in payees) == self.cost_nusd, self
        accounts = [p.account_id for p in payees]
        assert len(set(accounts)) == len(accounts) and self.wallet_id not in accounts, self

    def as_dict(self) -> dict[str, object]:
        data = dict(zip(_USAGE_FIELDS, _usage_fields(self), strict=True))
        data["payees"] = payees_json(self.payees)
        if not self.caps:
            del data["caps"]  # journal lines of uncapped requests read as before
        return data


def payees_json(payees: tuple[Payee, ...]) -> list[dict[str, object]]:
    return [{"account_id": p.account_id, "amount_nusd": p.amount_nusd} for p in payees]


def _payee(value: object) -> Payee:
    """A Payee, or its JSON form (a dict from as_dict, or an [account, amount] pair)."""
    if isinstance(value, Payee):
        return value
    if isinstance(value, dict):
        return Payee(**value)
    assert isinstance(value, (list, tuple)) and len(value) == 2, value
    return Payee(value[0], value[1])


_USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))
_usage_fields = operator.attrgetter(*_USAGE_FIELDS)


@dataclass(frozen=True)
class SettleResult:
    request_id: str
    outcome: SettleOutcome
    charged_nusd: int
    shortfall_nusd: int
    balance_nusd: int  # the wallet's balance after this settlement (for the hold mirror)
    version: int
    caps: tuple[CapBalance, ...] = ()  # the request's caps after it (for the hold mirror), if settled now

    def __post_init__(self) -> None:
        assert self.charged_nusd >= 0 and self.shortfall_nusd >= 0, self


def check_settle_results(items: Sequence[UsageRecord], results: Sequence[SettleResult]) -> None:
    """Postconditions at the money boundary, whichever book settled: one result per item, in
    order; what was settled split the cost exactly; what was refused moved nothing."""
    assert [r.request_id for r in results] == [i.request_id for i in items], "settle results out of order"
    for item, result in zip(items, results, strict=True):
        if result.outcome is SettleOutcome.SETTLED:
            assert result.charged_nusd + result.shortfall_nusd == item.cost_nusd, (item, result)
            assert result.balance_nusd >= 0 and (result.shortfall_nusd == 0 or result.balance_nusd == 0), (item, result)
        elif result.outcome is not SettleOutcome.REPLAY:
            assert result.charged_nusd == result.shortfall_nusd == 0, (item, result)


@dataclass(frozen=True)
class SettledUsage:
    record: UsageRecord
    charged_nusd: int
    shortfall_nusd: int
    created_at: str


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
    usage_transfers_nusd: int = 0  # sum of kind 'usage' transfers (wallets paying payees)
    shortfall_transfers_nusd: int = 0  # sum of kind 'shortfall' transfers (sys:shortfall paying payees)
    shortfall_other_nusd: int = 0  # net change to sys:shortfall by transfers of every other kind
    misdirected_transfers: int = 0  # 'usage' not from a wallet, 'shortfall' not from sys:shortfall
    positive_receivables: int = 0  # receivable accounts above zero: repaid more than owed


def check_invariants(totals: LedgerTotals) -> None:
    """Stated per rule, not per account, so they stay true as kinds and payees are added."""
    # Every transfer balances (one debit, one credit), so the whole book sums to zero.
    assert totals.balance_sum_nusd == 0, totals
    # Only kinds with may_go_negative (mw_account_kinds) go below zero.
    assert totals.negative_wallets == 0, totals
    assert totals.balance_mismatches == 0, totals
    # The usage log and the usage transfers tell the same story, whoever the payees were.
    assert totals.usage_transfers_nusd == totals.usage_charged_nusd, totals
    assert totals.shortfall_transfers_nusd == totals.usage_shortfall_nusd, totals
    # sys:shortfall is what usage could not charge, moved since only by other kinds (repayments).
    assert totals.shortfall_nusd == -totals.usage_shortfall_nusd + totals.shortfall_other_nusd, totals
    assert totals.misdirected_transfers == 0, totals
    assert totals.positive_receivables == 0, totals


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
    async def post(self, posting: Posting) -> TransferOutcome: ...
    async def reverse(self, reversal: Reversal) -> ReversalResult: ...
    async def owed(self, account_id: str) -> int: ...  # what a wallet owes after reversals
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
