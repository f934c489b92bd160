"""The settle rule, written once, in plain Python.

settle_legs() turns one request and its wallet's balance into the transfers to
write. SqliteBook writes exactly these; mw_settle_batch() (Postgres, one round
trip per batch) implements the same rule in plpgsql, and SettleModel, a whole
book in dictionaries, is the oracle the property tests hold both backends to.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ledger.book import (
    SHORTFALL_ACCOUNT,
    Payee,
    Posting,
    Reversal,
    ReversalResult,
    SettleOutcome,
    SettleResult,
    TransferKind,
    TransferOutcome,
    TransferRecord,
    UsageRecord,
)
from ledger.errors import IdempotencyConflict, InsufficientFunds, UnknownAccount
from ledger.postings import check_posting_replay, first_overdraft, receivable_account, reversal_transfers


@dataclass(frozen=True)
class SettleLeg:
    transfer_id: str
    debit_account: str
    credit_account: str
    amount_nusd: int
    kind: TransferKind


def payee_transfer_id(request_id: str, index: int) -> str:
    """Payee 0 keeps the ids settlement always had (request id, request id:shortfall)."""
    return request_id if index == 0 else f"{request_id}:{index}"


def settle_legs(item: UsageRecord, balance_nusd: int) -> tuple[int, int, list[SettleLeg]]:
    """(charged, shortfall, legs): payees filled in order, from the wallet first, then sys:shortfall."""
    assert balance_nusd >= 0, (item.request_id, balance_nusd)
    charged = min(item.cost_nusd, balance_nusd)
    shortfall = item.cost_nusd - charged
    legs: list[SettleLeg] = []
    wallet_left_nusd, shortfall_left_nusd = charged, shortfall
    for index, payee in enumerate(item.payees):
        from_wallet_nusd = min(payee.amount_nusd, wallet_left_nusd)
        wallet_left_nusd -= from_wallet_nusd
        shortfall_left_nusd -= payee.amount_nusd - from_wallet_nusd
        _payee_legs(legs, item, index, payee, from_wallet_nusd)
    # Postconditions: the money moved is the cost, split as promised.
    assert wallet_left_nusd == 0 and shortfall_left_nusd == 0, (item, balance_nusd)
    assert charged + shortfall == item.cost_nusd and 0 <= charged <= balance_nusd, (item, balance_nusd)
    return charged, shortfall, legs


def _payee_legs(legs: list[SettleLeg], item: UsageRecord, index: int, payee: Payee, from_wallet_nusd: int) -> None:
    transfer_id = payee_transfer_id(item.request_id, index)
    if from_wallet_nusd > 0:
        legs.append(SettleLeg(transfer_id, item.wallet_id, payee.account_id, from_wallet_nusd, TransferKind.USAGE))
    if payee.amount_nusd > from_wallet_nusd:
        legs.append(SettleLeg(f"{transfer_id}:shortfall", SHORTFALL_ACCOUNT, payee.account_id,
                              payee.amount_nusd - from_wallet_nusd, TransferKind.SHORTFALL))


@dataclass(frozen=True)
class _Settled:
    wallet_id: str
    cost_nusd: int
    payees: tuple[Payee, ...]
    charged_nusd: int
    shortfall_nusd: int


@dataclass
class SettleModel:
    """A book in dictionaries: balances and versions per account, settled requests."""

    balances: dict[str, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    wallets: set[str] = field(default_factory=set)
    may_go_negative: set[str] = field(default_factory=set)
    postings: dict[str, Posting] = field(default_factory=dict)
    settled: dict[str, _Settled] = field(default_factory=dict)
    reversals: dict[str, tuple[Reversal, ReversalResult]] = field(default_factory=dict)

    def add_account(self, account_id: str, balance_nusd: int = 0, *, wallet: bool = False,
                    may_go_negative: bool = False) -> None:
        self.balances[account_id] = balance_nusd
        self.versions[account_id] = 0
        if wallet:
            self.wallets.add(account_id)
        if may_go_negative:
            self.may_go_negative.add(account_id)

    def move(self, debit: str, credit: str, amount_nusd: int) -> None:
        for account, delta in ((debit, -amount_nusd), (credit, amount_nusd)):
            self.balances[account] += delta
            self.versions[account] += 1

    def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]:
        return [self._settle_one(item) for item in items]

    def _settle_one(self, item: UsageRecord) -> SettleResult:
        prior = self.settled.get(item.request_id)
        if prior is not None:
            balance, version = self.balances[prior.wallet_id], self.versions[prior.wallet_id]
            if (prior.wallet_id, prior.cost_nusd, prior.payees) == (item.wallet_id, item.cost_nusd, item.payees):
                return SettleResult(item.request_id, SettleOutcome.REPLAY, prior.charged_nusd, prior.shortfall_nusd,
                                    balance, version)
            return SettleResult(item.request_id, SettleOutcome.CONFLICT, 0, 0, balance, version)
        if item.wallet_id not in self.wallets:
            return SettleResult(item.request_id, SettleOutcome.UNKNOWN_WALLET, 0, 0, 0, 0)
        if any(p.account_id not in self.balances for p in item.payees):
            wallet_id = item.wallet_id
            return SettleResult(item.request_id, SettleOutcome.UNKNOWN_PAYEE, 0, 0,
                                self.balances[wallet_id], self.versions[wallet_id])
        charged, shortfall, legs = settle_legs(item, self.balances[item.wallet_id])
        for leg in legs:
            self.move(leg.debit_account, leg.credit_account, leg.amount_nusd)
        self.settled[item.request_id] = _Settled(item.wallet_id, item.cost_nusd, item.payees, charged, shortfall)
        return SettleResult(item.request_id, SettleOutcome.SETTLED, charged, shortfall,
                            self.balances[item.wallet_id], self.versions[item.wallet_id])

    def reverse(self, reversal: Reversal) -> ReversalResult:
        """Book.reverse() in dictionaries; the split is ledger/postings.py's, as both books use it."""
        if reversal.reversal_id in self.reversals:
            first, result = self.reversals[reversal.reversal_id]
            if first != reversal:
                raise IdempotencyConflict(f"reversal {reversal.reversal_id!r} exists with different content")
            return ReversalResult(result.taken_nusd, result.owed_nusd, TransferOutcome.EXISTS)
        assert reversal.account_id in self.wallets and reversal.counter_account in self.balances, reversal
        receivable = receivable_account(reversal.account_id)
        if receivable not in self.balances:
            self.add_account(receivable, may_go_negative=True)
        taken, owed, transfers = reversal_transfers(reversal, self.balances[reversal.account_id])
        for transfer in transfers:
            self.move(transfer.debit_account, transfer.credit_account, transfer.amount_nusd)
        result = ReversalResult(taken, owed, TransferOutcome.CREATED)
        self.reversals[reversal.reversal_id] = (reversal, result)
        return result

    def owed(self, account_id: str) -> int:
        return -self.balances.get(receivable_account(account_id), 0)

    def post(self, posting: Posting) -> TransferOutcome:
        """Book.post() in dictionaries: legs checked in order, all or nothing, idempotent by id."""
        transfers = posting.transfers()
        first = self.postings.get(posting.posting_id)
        if first is not None:
            return check_posting_replay(posting.posting_id, transfers, _as_records(first))
        unknown = [a for t in transfers for a in (t.debit_account, t.credit_account) if a not in self.balances]
        if unknown:
            raise UnknownAccount(f"no account {unknown[0]!r}")
        if first_overdraft(transfers, self.balances, self.may_go_negative) is not None:
            raise InsufficientFunds(f"posting {posting.posting_id!r}: an account cannot pay its leg")
        for transfer in transfers:
            self.move(transfer.debit_account, transfer.credit_account, transfer.amount_nusd)
        self.postings[posting.posting_id] = posting
        return TransferOutcome.CREATED


def _as_records(posting: Posting) -> list[TransferRecord]:
    return [TransferRecord(transfer, "", posting.posting_id) for transfer in posting.transfers()]
