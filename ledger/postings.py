"""Pure rules for postings and reversals, shared by both books.

A stored posting is compared with a retry leg by leg (same ids, accounts,
amounts, kind, memo): equal answers EXISTS, anything else is a conflict. A
reversal's split depends on the balance at the time, so its retry is compared
with what it asked for (account, counter account, total, kind, memo).
"""

from __future__ import annotations

from collections.abc import Sequence

from ledger.book import (
    RECEIVABLE_PREFIX,
    Reversal,
    ReversalResult,
    Transfer,
    TransferKind,
    TransferOutcome,
    TransferRecord,
)
from ledger.errors import IdempotencyConflict, NotAWallet


def check_posting_replay(posting_id: str, wanted: Sequence[Transfer], stored: Sequence[TransferRecord]) -> TransferOutcome:
    """EXISTS when the stored legs are exactly the wanted ones; IdempotencyConflict otherwise."""
    assert stored, posting_id
    if sorted(wanted, key=_transfer_key) != sorted((r.transfer for r in stored), key=_transfer_key):
        raise IdempotencyConflict(f"posting {posting_id!r} exists with different content")
    return TransferOutcome.EXISTS


def _transfer_key(transfer: Transfer) -> str:
    return transfer.transfer_id


def first_overdraft(transfers: Sequence[Transfer], balances_nusd: dict[str, int], may_go_negative: set[str]) -> Transfer | None:
    """The first leg that, applied in order, takes an account that may not go negative below zero.

    SQLite's row trigger meets the overdraft CHECK after every leg; Postgres
    applies a statement's legs at once, so it runs this first: legs are checked
    in order on both, as TigerBeetle checks linked transfers.
    """
    balances = dict(balances_nusd)
    for transfer in transfers:
        balances[transfer.debit_account] -= transfer.amount_nusd
        balances[transfer.credit_account] += transfer.amount_nusd
        if balances[transfer.debit_account] < 0 and transfer.debit_account not in may_go_negative:
            return transfer
    return None


def receivable_account(account_id: str) -> str:
    return f"{RECEIVABLE_PREFIX}{account_id}"


def reversal_transfers(reversal: Reversal, balance_nusd: int) -> tuple[int, int, list[Transfer]]:
    """(taken, owed, transfers): take what the account has, record the rest as owed."""
    taken = min(max(balance_nusd, 0), reversal.amount_nusd)
    owed = reversal.amount_nusd - taken
    transfers = []
    if taken > 0:
        transfers.append(Transfer(reversal.reversal_id, reversal.account_id, reversal.counter_account, taken,
                                  reversal.kind, memo=reversal.memo))
    if owed > 0:
        transfers.append(Transfer(f"{reversal.reversal_id}:owed", receivable_account(reversal.account_id),
                                  reversal.counter_account, owed, reversal.kind, memo=reversal.memo))
    assert taken + owed == reversal.amount_nusd and taken <= max(balance_nusd, 0), (reversal, balance_nusd)
    return taken, owed, transfers


def reversal_replay(reversal: Reversal, stored: Sequence[TransferRecord]) -> ReversalResult:
    """The first result of this reversal id, or IdempotencyConflict if it asked for something else."""
    receivable = receivable_account(reversal.account_id)
    taken = sum(r.transfer.amount_nusd for r in stored if r.transfer.debit_account == reversal.account_id)
    owed = sum(r.transfer.amount_nusd for r in stored if r.transfer.debit_account == receivable)
    same = (
        bool(stored)
        and taken + owed == reversal.amount_nusd
        and all(r.transfer.debit_account in (reversal.account_id, receivable) for r in stored)
        and all(r.transfer.credit_account == reversal.counter_account for r in stored)
        and all((r.transfer.kind, r.transfer.memo) == (reversal.kind, reversal.memo) for r in stored)
    )
    if not same:
        raise IdempotencyConflict(f"reversal {reversal.reversal_id!r} exists with different content")
    return ReversalResult(taken, owed, TransferOutcome.EXISTS)


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
