"""Credit lots on SQLite (ledger/lots.py has the rules): open, reconcile, expire.

Every writer runs inside BEGIN IMMEDIATE (SQLite's one writer), so a reconcile
sees a wallet that nothing else can change until it commits; the read-only
answers (lots, next_expiry) run in one read transaction, a consistent snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from ledger import lots as rules
from ledger import sqlite_postings as postings
from ledger.book import FUNDING_ACCOUNT, Leg, Posting, TransferKind, TransferOutcome
from ledger.errors import NotAWallet
from ledger.lots import Checkpoint, ExpiredLot, Lot, LotConflict, NextExpiry, TailNow
from ledger.sqlite_access import SqliteAccess
from ledger.times import utc_text

T = TypeVar("T")
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
# Debits that count as spending: everything leaving the wallet but its own expiry postings.
_SPENT = "NOT (kind = 'expiry' AND posting_id LIKE 'expiry:%')"
_TAIL = (
    "SELECT COALESCE(SUM(created_at >= :old), 0), COALESCE(SUM(CASE WHEN created_at >= :old THEN spent END), 0),"
    " COALESCE(SUM(created_at >= :new), 0), COALESCE(SUM(CASE WHEN created_at >= :new THEN spent END), 0) FROM ("
    f" SELECT created_at, CASE WHEN {_SPENT} THEN amount_nusd ELSE 0 END AS spent FROM mw_transfers"
    "  WHERE debit_account = :w AND created_at >= :lo"
    " UNION ALL SELECT created_at, 0 FROM mw_transfers WHERE credit_account = :w AND created_at >= :lo)"
)
_CHECKPOINT_WRITE = (
    "INSERT INTO mw_lot_wallets (wallet_id, balance_nusd, version, tail_start, tail_count, tail_debits_nusd,"
    " cum_debits_nusd) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (wallet_id) DO UPDATE SET"
    " balance_nusd = excluded.balance_nusd, version = excluded.version, tail_start = excluded.tail_start,"
    " tail_count = excluded.tail_count, tail_debits_nusd = excluded.tail_debits_nusd,"
    f" cum_debits_nusd = excluded.cum_debits_nusd, updated_at = {NOW}"
)


class SqliteLots(SqliteAccess):
    """Mixed into SqliteBook, which provides _run (one call on the ledger's thread)."""

    async def add_lot(self, posting: Posting, wallet_id: str, lot_id: str, expires_at: datetime) -> TransferOutcome:
        amount = _net_credit(posting, wallet_id)

        def write(conn: sqlite3.Connection) -> TransferOutcome:
            outcome = postings.post(conn, posting)
            opened = open_lot(conn, wallet_id, lot_id, amount, expires_at)
            if outcome is TransferOutcome.EXISTS and opened is TransferOutcome.CREATED:
                raise LotConflict(f"posting {posting.posting_id!r} was credited before, without lot {lot_id!r}")
            return opened

        return await self._run(lambda conn: postings.atomic(conn, write))

    async def lots(self, wallet_id: str) -> list[Lot]:
        def read(conn: sqlite3.Connection) -> list[Lot]:
            if conn.execute("SELECT 1 FROM mw_lot_wallets WHERE wallet_id = ?", (wallet_id,)).fetchone() is None:
                return []  # never had a lot
            return _reconciled(conn, wallet_id)[1]

        return await self._run(lambda conn: _snapshot(conn, read))

    async def next_expiry(self, wallet_id: str) -> NextExpiry | None:
        return rules.next_expiry(await self.lots(wallet_id))

    async def reconcile_lots(self, wallet_id: str) -> list[Lot]:
        """Move the wallet's checkpoint to now (what lots() computes, kept), so later reads scan less."""
        def run(conn: sqlite3.Connection) -> list[Lot]:
            if conn.execute("SELECT 1 FROM mw_lot_wallets WHERE wallet_id = ?", (wallet_id,)).fetchone() is None:
                return []  # never had a lot: nothing to keep
            checkpoint, lots = _reconciled(conn, wallet_id)
            _save(conn, checkpoint, lots)
            return lots

        return await self._run(lambda conn: postings.atomic(conn, run))

    async def expire_lots(self, now: datetime, batch_max: int = rules.EXPIRE_BATCH_MAX) -> list[ExpiredLot]:
        assert 1 <= batch_max <= rules.EXPIRE_BATCH_MAX, batch_max
        due_at = utc_text(now)

        def due(conn: sqlite3.Connection) -> dict[str, list[str]]:
            found = conn.execute("SELECT id, wallet_id FROM mw_credit_lots WHERE closed_at IS NULL AND expires_at <= ?"
                                 " ORDER BY expires_at, id LIMIT ?", (due_at, batch_max)).fetchall()
            by_wallet: dict[str, list[str]] = {}
            for lot_id, wallet_id in found:
                by_wallet.setdefault(wallet_id, []).append(lot_id)
            return by_wallet

        def expire(wallet_id: str, lot_ids: frozenset[str]) -> Callable[[sqlite3.Connection], list[ExpiredLot]]:
            return lambda conn: postings.atomic(conn, lambda c: _expire_wallet(c, wallet_id, lot_ids, due_at))

        expired: list[ExpiredLot] = []
        for wallet_id, lot_ids in (await self._run(due)).items():  # one short transaction per wallet
            expired += await self._run(expire(wallet_id, frozenset(lot_ids)))
        return expired


def open_lot(conn: sqlite3.Connection, wallet_id: str, lot_id: str, amount_nusd: int, expires_at: datetime) -> TransferOutcome:
    """Open a lot of amount_nusd, in the caller's transaction, right AFTER the credit that brings it.

    The lot is carved out of the wallet's non-expiring money, which the credit
    has just raised by at least amount_nusd (LotConflict otherwise). Idempotent
    by lot id: the same lot answers EXISTS, a different one LotConflict.
    """
    rules.validate_lot(lot_id, amount_nusd)
    expires = utc_text(expires_at)
    row = conn.execute("SELECT wallet_id, amount_nusd, expires_at FROM mw_credit_lots WHERE id = ?", (lot_id,)).fetchone()
    if row is not None:
        if tuple(row) != (wallet_id, amount_nusd, expires):
            raise LotConflict(f"lot {lot_id!r} exists with different content")
        return TransferOutcome.EXISTS
    checkpoint, lots = _reconciled(conn, wallet_id)
    if rules.non_expiring_nusd(checkpoint.balance_nusd, lots) < amount_nusd:
        raise LotConflict(f"wallet {wallet_id!r} has less non-expiring money than lot {lot_id!r}: open it after its credit")
    _save(conn, checkpoint, lots)
    conn.execute("INSERT INTO mw_credit_lots (id, wallet_id, amount_nusd, remaining_nusd, expires_at) VALUES (?, ?, ?, ?, ?)",
                 (lot_id, wallet_id, amount_nusd, amount_nusd, expires))
    return TransferOutcome.CREATED


def _expire_wallet(conn: sqlite3.Connection, wallet_id: str, lot_ids: frozenset[str], due_at: str) -> list[ExpiredLot]:
    checkpoint, lots = _reconciled(conn, wallet_id)
    expired = []
    for lot in lots:
        if lot.lot_id not in lot_ids or lot.closed_at is not None or lot.expires_at > due_at:
            continue  # closed by a concurrent sweep, or not this call's
        if lot.remaining_nusd > 0:
            posting_id = rules.expiry_posting_id(lot.lot_id)
            posting = Posting(posting_id, TransferKind.EXPIRY, (Leg(wallet_id, FUNDING_ACCOUNT, lot.remaining_nusd),),
                              memo=f"credit lot {lot.lot_id} expired")
            assert postings.post(conn, posting) is TransferOutcome.CREATED, posting  # a lot closes with its posting
            expired.append(ExpiredLot(lot.lot_id, wallet_id, lot.remaining_nusd, lot.expires_at, posting_id))
        conn.execute(f"UPDATE mw_credit_lots SET remaining_nusd = 0, expired_nusd = ?, closed_at = {NOW} WHERE id = ?",
                     (lot.remaining_nusd, lot.lot_id))
    _save(conn, rules.after_expiries(checkpoint, expired), [lot for lot in lots if lot.lot_id not in lot_ids])
    return expired


def _reconciled(conn: sqlite3.Connection, wallet_id: str) -> tuple[Checkpoint, list[Lot]]:
    """The wallet's checkpoint and open lots as of now (a fresh checkpoint if it never had a lot)."""
    account = conn.execute(
        "SELECT a.balance_nusd, a.version FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind"
        " WHERE a.id = ? AND k.is_wallet", (wallet_id,)).fetchone()
    if account is None:
        raise NotAWallet(f"no wallet {wallet_id!r}")
    stored = conn.execute("SELECT * FROM mw_lot_wallets WHERE wallet_id = ?", (wallet_id,)).fetchone()
    new_start = conn.execute(f"SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-{rules.TAIL_MARGIN_S} seconds')").fetchone()[0]
    old_start = new_start if stored is None else stored["tail_start"]
    tail = conn.execute(_TAIL, {"w": wallet_id, "old": old_start, "new": new_start,
                                "lo": min(old_start, new_start)}).fetchone()
    now = TailNow(account[0], account[1], tail[0], tail[1], new_start, tail[2], tail[3])
    if stored is None:  # no lot ever: nothing to consume, only the sums to start from
        return Checkpoint(wallet_id, now.balance_nusd, now.version, new_start, now.new_count, now.new_debits_nusd,
                          _cum_debits(conn, wallet_id)), []
    checkpoint = Checkpoint(wallet_id, stored["balance_nusd"], stored["version"], stored["tail_start"],
                            stored["tail_count"], stored["tail_debits_nusd"], stored["cum_debits_nusd"])
    lots = [_lot(row) for row in conn.execute(
        "SELECT * FROM mw_credit_lots WHERE wallet_id = ? AND closed_at IS NULL ORDER BY expires_at, id", (wallet_id,))]
    cum = None if rules.tail_covers_window(checkpoint, now) else _cum_debits(conn, wallet_id)
    return rules.reconcile(checkpoint, lots, now, cum)


def _cum_debits(conn: sqlite3.Connection, wallet_id: str) -> int:
    found: int = conn.execute(f"SELECT COALESCE(SUM(amount_nusd), 0) FROM mw_transfers WHERE debit_account = ? AND {_SPENT}",
                              (wallet_id,)).fetchone()[0]
    return found


def _save(conn: sqlite3.Connection, checkpoint: Checkpoint, lots: list[Lot]) -> None:
    c = checkpoint
    conn.execute(_CHECKPOINT_WRITE, (c.wallet_id, c.balance_nusd, c.version, c.tail_start, c.tail_count,
                                     c.tail_debits_nusd, c.cum_debits_nusd))
    conn.executemany("UPDATE mw_credit_lots SET remaining_nusd = ? WHERE id = ? AND remaining_nusd <> ?",
                     [(lot.remaining_nusd, lot.lot_id, lot.remaining_nusd) for lot in lots])


def _snapshot(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN")  # deferred: a read transaction, one snapshot for every statement
    try:
        return fn(conn)
    finally:
        conn.execute("COMMIT")


def _lot(row: sqlite3.Row) -> Lot:
    return Lot(row["id"], row["wallet_id"], row["amount_nusd"], row["remaining_nusd"], row["expires_at"], row["opened_at"],
               row["expired_nusd"], row["closed_at"])


def _net_credit(posting: Posting, wallet_id: str) -> int:
    return sum(leg.amount_nusd if leg.credit_account == wallet_id else -leg.amount_nusd
               for leg in posting.legs if wallet_id in (leg.debit_account, leg.credit_account))
