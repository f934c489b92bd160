"""The money-moving statements of SqliteBook: postings, settlement, reversals.

Each function runs inside one BEGIN IMMEDIATE ... COMMIT (see _atomic), so a
refusal anywhere rolls back every leg. Balances are kept by the row trigger of
migration 0002: SQLite has one writer for the whole file, so there is no hot row
lock to batch away, and each UPDATE touches a page already in the transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

import orjson

from ledger.book import (
    RECEIVABLE_KIND,
    Posting,
    Reversal,
    ReversalResult,
    SettleOutcome,
    SettleResult,
    Transfer,
    TransferOutcome,
    UsageRecord,
    payees_json,
)
from ledger.errors import InsufficientFunds, NotAWallet, UnknownAccount
from ledger.model import settle_legs
from ledger.postings import check_funding_credit, check_posting_replay, receivable_account, reversal_replay, reversal_transfers
from ledger.rows import USAGE_COLUMNS, transfer_record, usage_values

T = TypeVar("T")

_TRANSFER_INSERT = (
    "INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind, request_id, memo)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_USAGE_INSERT = (
    f"INSERT INTO mw_usage ({', '.join(USAGE_COLUMNS)}, payees, charged_nusd, shortfall_nusd)"
    f" VALUES ({', '.join('?' * (len(USAGE_COLUMNS) + 3))})"
)
_WALLET_BALANCE = (
    "SELECT a.balance_nusd, a.version FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind"
    " WHERE a.id = ? AND k.is_wallet"
)


def atomic(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
        return result
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def post(conn: sqlite3.Connection, posting: Posting) -> TransferOutcome:
    return _write_posting(conn, posting.posting_id, posting.transfers())


def _write_posting(conn: sqlite3.Connection, posting_id: str, transfers: Sequence[Transfer]) -> TransferOutcome:
    ids = [t.transfer_id for t in transfers]
    stored = conn.execute(
        f"SELECT * FROM mw_transfers WHERE posting_id = ? OR id IN ({', '.join('?' * len(ids))})", (posting_id, *ids)
    ).fetchall()
    if stored:
        return check_posting_replay(posting_id, transfers, [transfer_record(dict(row)) for row in stored])
    kinds = _account_kinds(conn, {a for t in transfers for a in (t.debit_account, t.credit_account)})
    try:
        conn.executemany(_TRANSFER_INSERT, [
            (t.transfer_id, posting_id, t.debit_account, t.credit_account, t.amount_nusd, t.kind.value, t.request_id,
             t.memo) for t in transfers
        ])
    except sqlite3.IntegrityError as exc:
        if "mw_accounts_no_overdraft" in str(exc):
            raise InsufficientFunds(f"posting {posting_id!r}: an account cannot pay its leg") from exc
        raise
    # After the insert, so an overdraft is reported as such; the caller rolls back.
    for transfer in transfers:
        check_funding_credit(transfer, kinds[transfer.credit_account])
    return TransferOutcome.CREATED


def _account_kinds(conn: sqlite3.Connection, accounts: set[str]) -> dict[str, str]:
    marks = ", ".join("?" * len(accounts))
    kinds = {row[0]: row[1] for row in conn.execute(f"SELECT id, kind FROM mw_accounts WHERE id IN ({marks})", tuple(accounts))}
    missing = sorted(accounts - kinds.keys())
    if missing:
        raise UnknownAccount(f"no account {missing[0]!r}")
    return kinds


def settle_batch(conn: sqlite3.Connection, items: Sequence[UsageRecord]) -> list[SettleResult]:
    known: dict[str, bool] = {}  # payee account -> exists, looked up once per batch
    return [_settle_one(conn, item, known) for item in items]


def _settle_one(conn: sqlite3.Connection, item: UsageRecord, known: dict[str, bool]) -> SettleResult:
    """The rule of ledger/model.py (settle_legs); mw_settle_batch() is its Postgres twin.

    Few statements on purpose: this runs on a thread that must win the GIL back
    from a busy event loop before each one. Foreign keys, the primary keys and
    the overdraft CHECK still guard every write.
    """
    prior = conn.execute(
        "SELECT wallet_id, cost_nusd, payees, charged_nusd, shortfall_nusd FROM mw_usage WHERE request_id = ?",
        (item.request_id,),
    ).fetchone()
    if prior is not None:
        balance, version = _balance(conn, prior[0])
        if (prior[0], prior[1], orjson.loads(prior[2])) == (item.wallet_id, item.cost_nusd, payees_json(item.payees)):
            return SettleResult(item.request_id, SettleOutcome.REPLAY, prior[3], prior[4], balance, version)
        return SettleResult(item.request_id, SettleOutcome.CONFLICT, 0, 0, balance, version)
    row = conn.execute(_WALLET_BALANCE, (item.wallet_id,)).fetchone()
    if row is None:
        return SettleResult(item.request_id, SettleOutcome.UNKNOWN_WALLET, 0, 0, 0, 0)
    balance, version = row
    if not _payees_exist(conn, item, known):
        return SettleResult(item.request_id, SettleOutcome.UNKNOWN_PAYEE, 0, 0, balance, version)
    charged, shortfall, legs = settle_legs(item, balance)
    for leg in legs:  # usually one: execute() costs less than executemany() for it
        conn.execute(_TRANSFER_INSERT, (leg.transfer_id, item.request_id, leg.debit_account, leg.credit_account,
                                        leg.amount_nusd, leg.kind.value, item.request_id, None))
    payees = orjson.dumps(payees_json(item.payees)).decode()
    conn.execute(_USAGE_INSERT, (*usage_values(item), payees, charged, shortfall))
    # What the row trigger just did; settle_legs() asserted charged <= balance.
    after_balance, after_version = balance - charged, version + sum(1 for leg in legs if leg.debit_account == item.wallet_id)
    return SettleResult(item.request_id, SettleOutcome.SETTLED, charged, shortfall, after_balance, after_version)


def _payees_exist(conn: sqlite3.Connection, item: UsageRecord, known: dict[str, bool]) -> bool:
    unseen = [p.account_id for p in item.payees if p.account_id not in known]
    if unseen:
        found = {row[0] for row in conn.execute(
            f"SELECT id FROM mw_accounts WHERE id IN ({', '.join('?' * len(unseen))})", unseen)}
        known.update((account, account in found) for account in unseen)
    return all(known[p.account_id] for p in item.payees)


def _balance(conn: sqlite3.Connection, account_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT balance_nusd, version FROM mw_accounts WHERE id = ?", (account_id,)).fetchone()
    return (row[0], row[1]) if row is not None else (0, 0)


def reverse(conn: sqlite3.Connection, reversal: Reversal) -> ReversalResult:
    stored = conn.execute("SELECT * FROM mw_transfers WHERE posting_id = ?", (reversal.reversal_id,)).fetchall()
    if stored:
        return reversal_replay(reversal, [transfer_record(dict(row)) for row in stored])
    row = conn.execute(_WALLET_BALANCE, (reversal.account_id,)).fetchone()
    if row is None:
        raise NotAWallet(f"no wallet {reversal.account_id!r} to reverse from")
    conn.execute(
        "INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES (?, ?, ?, 1) ON CONFLICT (id) DO NOTHING",
        (receivable_account(reversal.account_id), RECEIVABLE_KIND, f"owed by {reversal.account_id}"),
    )
    taken, owed, transfers = reversal_transfers(reversal, row[0])
    _write_posting(conn, reversal.reversal_id, transfers)
    assert _balance(conn, reversal.account_id)[0] == row[0] - taken, reversal
    return ReversalResult(taken, owed, TransferOutcome.CREATED)


def owed(conn: sqlite3.Connection, account_id: str) -> int:
    balance, _ = _balance(conn, receivable_account(account_id))
    return -balance
