"""Deposits and card payments on SQLite (ledger/payments.py): one writer, so each check and change is atomic.

Every change that keeps a rule (a deposit credited once, a take-back never past
what was paid, one auto-reload in flight) runs in one BEGIN IMMEDIATE transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
from typing import Any, TypeVar

from ledger import owner_rows as rows
from ledger import sqlite_postings as postings
from ledger.book import TransferKind, TransferOutcome
from ledger.errors import UnknownAccount
from ledger.owners import Deposit, DepositNotPending, DepositStatus, Page
from ledger.payments import (
    TAKE_BACK_KINDS,
    AutoReload,
    Keyless,
    Notification,
    TakeBack,
    deposit_postings,
    take_back_memo,
    take_back_reversals,
)
from ledger.sqlite_access import SqliteAccess
from ledger.sqlite_lots import open_lot
from ledger.sqlite_webhooks import emit_in, follow_top_up
from ledger.times import parse_utc, utc_text_or_none
from ledger.webhooks import deposit_event

T = TypeVar("T")
NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
_DEPOSIT_COLUMNS = ("id, wallet_id, method, amount_credited_nusd, paid_amount, paid_currency, status, external_ref,"
                    " discount_nusd, payment_ref, customer_ref, tier, purpose, paid_cents, credit_expires_at")


class SqlitePayments(SqliteAccess):
    """Mixed into SqliteBook, which provides _run (one call on the ledger's thread)."""

    # --- deposits --------------------------------------------------------

    async def create_deposit(self, deposit: Deposit) -> None:
        await self._atomic(lambda conn: _insert_deposit(conn, deposit))

    async def deposit(self, deposit_id: str) -> Deposit | None:
        return await self._run(lambda conn: _deposit_where(conn, "id", deposit_id))

    async def deposit_by_ref(self, external_ref: str) -> Deposit | None:
        return await self._run(lambda conn: _deposit_where(conn, "external_ref", external_ref))

    async def deposit_by_payment_ref(self, payment_ref: str) -> Deposit | None:
        return await self._run(lambda conn: _deposit_where(conn, "payment_ref", payment_ref))

    async def set_deposit_ref(self, deposit_id: str, external_ref: str) -> None:
        def update(conn: sqlite3.Connection) -> None:
            found = conn.execute("UPDATE mw_deposits SET external_ref = ? WHERE id = ? AND"
                                 " (external_ref IS NULL OR external_ref = ?)", (external_ref, deposit_id, external_ref))
            if found.rowcount != 1:
                raise UnknownAccount(f"no deposit {deposit_id!r} without another reference")

        await self._atomic(update)

    async def list_deposits(self, wallet_id: str, limit: int, cursor: str | None) -> Page[Deposit]:
        def read(conn: sqlite3.Connection) -> Page[Deposit]:
            after: tuple[Any, ...] = ()
            where = "wallet_id = ?"
            if cursor is not None:
                created_at, deposit_id = rows.decode_cursor(cursor, 2)
                parse_utc(created_at)  # ValueError: a forged cursor
                where += " AND (created_at, id) < (?, ?)"
                after = (created_at, deposit_id)
            found = conn.execute(f"SELECT * FROM mw_deposits WHERE {where} ORDER BY created_at DESC, id DESC LIMIT ?",
                                 (wallet_id, *after, limit + 1)).fetchall()
            total = conn.execute("SELECT COUNT(*) FROM mw_deposits WHERE wallet_id = ?", (wallet_id,)).fetchone()[0]
            last = found[limit - 1] if len(found) > limit else None
            return Page(tuple(rows.deposit(row) for row in found[:limit]), total,
                        rows.encode_cursor(last["created_at"], last["id"]) if last else None)

        return await self._run(read)

    async def complete_deposit(self, deposit_id: str, *, payment_ref: str | None = None,
                               customer_ref: str | None = None) -> TransferOutcome:
        def complete(conn: sqlite3.Connection) -> TransferOutcome:
            found = _deposit_where(conn, "id", deposit_id)
            if found is None:
                raise UnknownAccount(f"no deposit {deposit_id!r}")
            if found.status is DepositStatus.COMPLETED:
                return TransferOutcome.EXISTS
            if found.status is not DepositStatus.PENDING:
                raise DepositNotPending(f"deposit {deposit_id!r} is {found.status.value}, not pending")
            follow_top_up(conn, found.wallet_id, found.amount_credited_nusd)
            outcome = [postings.post(conn, posting) for posting in deposit_postings(found)][0]
            emit_in(conn, f"deposit.completed:{deposit_id}", found.wallet_id, "deposit.completed", deposit_event(found))
            if found.credit_expires_at is not None:  # credit validity: the credit is a lot that expires
                open_lot(conn, found.wallet_id, found.deposit_id, found.amount_credited_nusd,
                         parse_utc(found.credit_expires_at))
            conn.execute(f"UPDATE mw_deposits SET status = 'completed', completed_at = {NOW},"
                         " payment_ref = COALESCE(?, payment_ref), customer_ref = COALESCE(?, customer_ref) WHERE id = ?",
                         (payment_ref, customer_ref, deposit_id))
            return outcome

        return await self._atomic(complete)

    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit:
        assert status is not DepositStatus.COMPLETED, "complete_deposit() credits and completes"

        def update(conn: sqlite3.Connection) -> Deposit:
            conn.execute("UPDATE mw_deposits SET status = ? WHERE id = ?", (status.value, deposit_id))
            found = _deposit_where(conn, "id", deposit_id)
            if found is None:
                raise UnknownAccount(f"no deposit {deposit_id!r}")
            return found

        return await self._atomic(update)

    # --- money taken back ------------------------------------------------

    async def reverse_deposit_upto(self, deposit_id: str, series_id: str, kind: TransferKind,
                                   cents_upto: int) -> TakeBack:
        def take(conn: sqlite3.Connection) -> TakeBack:
            deposit = _deposit_where(conn, "id", deposit_id)
            if deposit is None or deposit.status not in (DepositStatus.COMPLETED, DepositStatus.REFUNDED):
                raise DepositNotPending(f"deposit {deposit_id!r} was never credited: nothing to take back")
            done = conn.execute(
                "SELECT COALESCE(SUM(CASE WHEN id LIKE '%:paid' OR id LIKE '%:paid:owed' THEN amount_nusd END), 0),"
                " COALESCE(SUM(CASE WHEN id LIKE '%:discount' OR id LIKE '%:discount:owed' THEN amount_nusd END), 0)"
                " FROM mw_transfers WHERE id LIKE ? ESCAPE '\\'", (_like_prefix(series_id),)).fetchone()
            todo = take_back_reversals(deposit, series_id, kind, cents_upto, (done[0], done[1]))
            results = {share: postings.reverse(conn, reversal) for share, reversal in todo.items()}
            _mark_refunded(conn, deposit)
            return TakeBack(results.get("paid"), results.get("discount"))

        return await self._atomic(take)

    # --- processed events ------------------------------------------------

    async def event_seen(self, event_id: str) -> bool:
        return await self._run(lambda conn: conn.execute(
            "SELECT 1 FROM mw_payment_events WHERE id = ?", (event_id,)).fetchone() is not None)

    async def record_event(self, event_id: str, event_type: str) -> None:
        await self._atomic(lambda conn: conn.execute(
            "INSERT INTO mw_payment_events (id, type) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", (event_id, event_type)))

    # --- auto-reload and notifications -------------------------------------

    async def auto_reload(self, wallet_id: str) -> AutoReload | None:
        return await self._run(lambda conn: _auto_reload(conn, wallet_id))

    async def enabled_auto_reloads(self) -> list[AutoReload]:
        return await self._run(lambda conn: [_auto_reload_row(r) for r in conn.execute(
            "SELECT * FROM mw_auto_reload WHERE enabled = 1").fetchall()])

    async def set_auto_reload(self, wallet_id: str, enabled: bool, threshold_nusd: int, amount_nusd: int) -> AutoReload:
        def upsert(conn: sqlite3.Connection) -> AutoReload:
            conn.execute(
                "INSERT INTO mw_auto_reload (wallet_id, enabled, threshold_nusd, amount_nusd) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (wallet_id) DO UPDATE SET enabled = excluded.enabled,"
                " threshold_nusd = excluded.threshold_nusd, amount_nusd = excluded.amount_nusd,"
                f" paused_reason = CASE WHEN excluded.enabled THEN NULL ELSE paused_reason END, updated_at = {NOW}",
                (wallet_id, int(enabled), threshold_nusd, amount_nusd))
            found = _auto_reload(conn, wallet_id)
            assert found is not None
            return found

        return await self._atomic(upsert)

    async def save_payment_method(self, wallet_id: str, customer_ref: str, payment_method_ref: str) -> None:
        await self._atomic(lambda conn: conn.execute(
            "INSERT INTO mw_auto_reload (wallet_id, threshold_nusd, amount_nusd, customer_ref, payment_method_ref)"
            " VALUES (?, 0, 1, ?, ?) ON CONFLICT (wallet_id) DO UPDATE SET customer_ref = excluded.customer_ref,"
            f" payment_method_ref = excluded.payment_method_ref, updated_at = {NOW}",
            (wallet_id, customer_ref, payment_method_ref)))

    async def claim_auto_reload(self, wallet_id: str, deposit: Deposit) -> bool:
        def claim(conn: sqlite3.Connection) -> bool:
            found = _auto_reload(conn, wallet_id)
            if found is None or not found.ready or found.in_flight_deposit_id is not None:
                return False
            _insert_deposit(conn, deposit)
            conn.execute("UPDATE mw_auto_reload SET in_flight_deposit_id = ? WHERE wallet_id = ?",
                         (deposit.deposit_id, wallet_id))
            return True

        return await self._atomic(claim)

    async def finish_auto_reload(self, wallet_id: str, deposit_id: str, declined_reason: str | None) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            freed = conn.execute("UPDATE mw_auto_reload SET in_flight_deposit_id = NULL,"
                                 " paused_reason = COALESCE(?, paused_reason) WHERE wallet_id = ?"
                                 " AND in_flight_deposit_id = ?", (declined_reason, wallet_id, deposit_id)).rowcount
            if freed and declined_reason is not None:
                emit_in(conn, f"auto_reload.failed:{deposit_id}", wallet_id, "auto_reload.failed",
                        {"deposit_id": deposit_id, "reason": declined_reason})
                _notify(conn, wallet_id, "auto_reload_paused",
                        f"Auto-reload is paused: the card was declined ({declined_reason}). "
                        "Update the card with a new top-up, then enable auto-reload again.")

        await self._atomic(finish)

    async def create_keyless(self, deposit: Deposit, recovery_hash: str) -> None:
        def create(conn: sqlite3.Connection) -> None:
            _insert_deposit(conn, deposit)
            conn.execute("INSERT INTO mw_keyless (deposit_id, wallet_id, recovery_hash) VALUES (?, ?, ?)",
                         (deposit.deposit_id, deposit.wallet_id, recovery_hash))

        await self._atomic(create)

    async def keyless(self, deposit_id: str) -> Keyless | None:
        def read(conn: sqlite3.Connection) -> Keyless | None:
            row = conn.execute("SELECT * FROM mw_keyless WHERE deposit_id = ?", (deposit_id,)).fetchone()
            return None if row is None else _keyless(row)

        return await self._run(read)

    async def claim_keyless_reveal(self, deposit_id: str) -> bool:
        return await self._atomic(lambda conn: conn.execute(
            f"UPDATE mw_keyless SET revealed_at = {NOW} WHERE deposit_id = ? AND revealed_at IS NULL",
            (deposit_id,)).rowcount == 1)

    async def set_keyless_keys(self, deposit_id: str, key_id: str, management_key_id: str) -> None:
        await self._atomic(lambda conn: conn.execute(
            "UPDATE mw_keyless SET key_id = ?, management_key_id = ? WHERE deposit_id = ?",
            (key_id, management_key_id, deposit_id)))

    async def add_notification(self, wallet_id: str, kind: str, message: str) -> None:
        await self._atomic(lambda conn: _notify(conn, wallet_id, kind, message))

    async def notifications(self, wallet_id: str, limit: int) -> list[Notification]:
        return await self._run(lambda conn: [
            Notification(r["id"], r["wallet_id"], r["kind"], r["message"], r["created_at"]) for r in conn.execute(
                "SELECT * FROM mw_notifications WHERE wallet_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                (wallet_id, limit)).fetchall()])


def _insert_deposit(conn: sqlite3.Connection, d: Deposit) -> None:
    conn.execute(f"INSERT INTO mw_deposits ({_DEPOSIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (d.deposit_id, d.wallet_id, d.method, d.amount_credited_nusd, d.paid_amount, d.paid_currency,
                  d.status.value, d.external_ref, d.discount_nusd, d.payment_ref, d.customer_ref, d.tier, d.purpose,
                  d.paid_cents, d.credit_expires_at))


def _deposit_where(conn: sqlite3.Connection, column: str, value: str) -> Deposit | None:
    assert column in ("id", "external_ref", "payment_ref"), column
    row = conn.execute(f"SELECT * FROM mw_deposits WHERE {column} = ?", (value,)).fetchone()
    return None if row is None else rows.deposit(row)


def _mark_refunded(conn: sqlite3.Connection, deposit: Deposit) -> None:
    """A deposit whose whole credit has been taken back (refunds and disputes together) reads `refunded`."""
    memos = tuple(take_back_memo(kind, deposit.deposit_id) for kind in TAKE_BACK_KINDS)
    taken = conn.execute("SELECT COALESCE(SUM(amount_nusd), 0) FROM mw_transfers WHERE kind IN ('card_refund', 'chargeback')"
                         " AND memo IN (?, ?)", memos).fetchone()[0]
    if taken >= deposit.amount_credited_nusd:
        conn.execute("UPDATE mw_deposits SET status = 'refunded' WHERE id = ?", (deposit.deposit_id,))


def _like_prefix(series_id: str) -> str:
    escaped = series_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"{escaped}:%"


def _auto_reload(conn: sqlite3.Connection, wallet_id: str) -> AutoReload | None:
    row = conn.execute("SELECT * FROM mw_auto_reload WHERE wallet_id = ?", (wallet_id,)).fetchone()
    return None if row is None else _auto_reload_row(row)


def _auto_reload_row(row: Any) -> AutoReload:
    return AutoReload(row["wallet_id"], bool(row["enabled"]), row["threshold_nusd"], row["amount_nusd"],
                      row["customer_ref"], row["payment_method_ref"], row["paused_reason"], row["in_flight_deposit_id"],
                      utc_text_or_none(row["updated_at"]))


def _keyless(row: Any) -> Keyless:
    return Keyless(row["deposit_id"], row["wallet_id"], row["recovery_hash"], utc_text_or_none(row["revealed_at"]),
                   row["key_id"], row["management_key_id"])


def _notify(conn: sqlite3.Connection, wallet_id: str, kind: str, message: str) -> None:
    conn.execute("INSERT INTO mw_notifications (id, wallet_id, kind, message) VALUES (?, ?, ?, ?)",
                 (f"ntf_{secrets.token_hex(8)}", wallet_id, kind, message))
