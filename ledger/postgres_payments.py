"""Deposits and card payments on Postgres (ledger/payments.py).

Each change that keeps a rule locks its row first: the deposit (credited once,
a take-back never past what was paid) or the wallet's auto-reload row (one
reload in flight), so concurrent webhooks and gateway processes serialise on
it, and the account rows are locked after, in the ledger's one lock order.
"""

from __future__ import annotations

import secrets
from typing import Any, TypeVar

import asyncpg

from ledger import owner_rows as rows
from ledger import postgres_postings as postings
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
from ledger.postgres_access import PostgresAccess
from ledger.postgres_lots import open_lot
from ledger.postgres_webhooks import emit_in, follow_top_up
from ledger.times import parse_utc, utc_text_or_none
from ledger.webhooks import deposit_event

T = TypeVar("T")
_DEPOSIT_COLUMNS = ("id, wallet_id, method, amount_credited_nusd, paid_amount, paid_currency, status, external_ref,"
                    " discount_nusd, payment_ref, customer_ref, tier, purpose, paid_cents, credit_expires_at")


class PostgresPayments(PostgresAccess):
    """Mixed into PostgresBook, which provides _with (a pooled connection)."""

    # --- deposits --------------------------------------------------------

    async def create_deposit(self, deposit: Deposit) -> None:
        await self._with(lambda conn: _insert_deposit(conn, deposit))

    async def deposit(self, deposit_id: str) -> Deposit | None:
        return await self._with(lambda conn: _deposit_where(conn, "id", deposit_id))

    async def deposit_by_ref(self, external_ref: str) -> Deposit | None:
        return await self._with(lambda conn: _deposit_where(conn, "external_ref", external_ref))

    async def deposit_by_payment_ref(self, payment_ref: str) -> Deposit | None:
        return await self._with(lambda conn: _deposit_where(conn, "payment_ref", payment_ref))

    async def set_deposit_ref(self, deposit_id: str, external_ref: str) -> None:
        async def update(conn: asyncpg.Connection) -> None:
            status = await conn.execute("UPDATE mw_deposits SET external_ref = $2 WHERE id = $1 AND"
                                        " (external_ref IS NULL OR external_ref = $2)", deposit_id, external_ref)
            if status != "UPDATE 1":
                raise UnknownAccount(f"no deposit {deposit_id!r} without another reference")

        await self._with(update)

    async def list_deposits(self, wallet_id: str, limit: int, cursor: str | None) -> Page[Deposit]:
        async def read(conn: asyncpg.Connection) -> Page[Deposit]:
            args: list[Any] = [wallet_id, limit + 1]
            where = "wallet_id = $1"
            if cursor is not None:
                created_at, deposit_id = rows.decode_cursor(cursor, 2)
                where += " AND (created_at, id) < ($3::timestamptz, $4)"
                args += [parse_utc(created_at), deposit_id]
            found = await conn.fetch(
                f"SELECT * FROM mw_deposits WHERE {where} ORDER BY created_at DESC, id DESC LIMIT $2", *args)
            total = await conn.fetchval("SELECT COUNT(*) FROM mw_deposits WHERE wallet_id = $1", wallet_id)
            last = found[limit - 1] if len(found) > limit else None
            next_cursor = rows.encode_cursor(last["created_at"].isoformat(), last["id"]) if last else None
            return Page(tuple(rows.deposit(row) for row in found[:limit]), total, next_cursor)

        return await self._with(read)

    async def complete_deposit(self, deposit_id: str, *, payment_ref: str | None = None,
                               customer_ref: str | None = None) -> TransferOutcome:
        async def complete(conn: asyncpg.Connection) -> TransferOutcome:
            found = await _deposit_where(conn, "id", deposit_id, lock=True)
            if found is None:
                raise UnknownAccount(f"no deposit {deposit_id!r}")
            if found.status is DepositStatus.COMPLETED:
                return TransferOutcome.EXISTS
            if found.status is not DepositStatus.PENDING:
                raise DepositNotPending(f"deposit {deposit_id!r} is {found.status.value}, not pending")
            await follow_top_up(conn, found.wallet_id, found.amount_credited_nusd)
            outcomes = [await postings.write_posting(conn, p.posting_id, p.transfers()) for p in deposit_postings(found)]
            await emit_in(conn, f"deposit.completed:{deposit_id}", found.wallet_id, "deposit.completed",
                          deposit_event(found))
            if found.credit_expires_at is not None:  # credit validity: the credit is a lot that expires
                await open_lot(conn, found.wallet_id, found.deposit_id, found.amount_credited_nusd,
                               parse_utc(found.credit_expires_at))
            await conn.execute("UPDATE mw_deposits SET status = 'completed', completed_at = now(),"
                               " payment_ref = COALESCE($2, payment_ref), customer_ref = COALESCE($3, customer_ref)"
                               " WHERE id = $1", deposit_id, payment_ref, customer_ref)
            return outcomes[0]

        return await self._atomic(complete)

    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit:
        assert status is not DepositStatus.COMPLETED, "complete_deposit() credits and completes"

        async def update(conn: asyncpg.Connection) -> Deposit:
            row = await conn.fetchrow("UPDATE mw_deposits SET status = $2 WHERE id = $1 RETURNING *", deposit_id,
                                      status.value)
            if row is None:
                raise UnknownAccount(f"no deposit {deposit_id!r}")
            return rows.deposit(row)

        return await self._with(update)

    # --- money taken back ------------------------------------------------

    async def reverse_deposit_upto(self, deposit_id: str, series_id: str, kind: TransferKind,
                                   cents_upto: int) -> TakeBack:
        async def take(conn: asyncpg.Connection) -> TakeBack:
            deposit = await _deposit_where(conn, "id", deposit_id, lock=True)  # one take-back of it at a time
            if deposit is None or deposit.status not in (DepositStatus.COMPLETED, DepositStatus.REFUNDED):
                raise DepositNotPending(f"deposit {deposit_id!r} was never credited: nothing to take back")
            done = await conn.fetchrow(
                "SELECT COALESCE(SUM(CASE WHEN id LIKE '%:paid' OR id LIKE '%:paid:owed' THEN amount_nusd END), 0) AS paid,"
                " COALESCE(SUM(CASE WHEN id LIKE '%:discount' OR id LIKE '%:discount:owed' THEN amount_nusd END), 0)"
                " AS discount FROM mw_transfers WHERE starts_with(id, $1)", f"{series_id}:")
            todo = take_back_reversals(deposit, series_id, kind, cents_upto, (int(done["paid"]), int(done["discount"])))
            results = {share: await postings.reverse(conn, reversal) for share, reversal in todo.items()}
            await _mark_refunded(conn, deposit)
            return TakeBack(results.get("paid"), results.get("discount"))

        return await self._atomic(take)

    # --- processed events ------------------------------------------------

    async def event_seen(self, event_id: str) -> bool:
        return await self._with(lambda conn: _exists(conn, "SELECT 1 FROM mw_payment_events WHERE id = $1", event_id))

    async def record_event(self, event_id: str, event_type: str) -> None:
        await self._with(lambda conn: conn.execute(
            "INSERT INTO mw_payment_events (id, type) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", event_id, event_type))

    # --- auto-reload and notifications -------------------------------------

    async def auto_reload(self, wallet_id: str) -> AutoReload | None:
        return await self._with(lambda conn: _auto_reload(conn, wallet_id))

    async def enabled_auto_reloads(self) -> list[AutoReload]:
        async def read(conn: asyncpg.Connection) -> list[AutoReload]:
            return [_auto_reload_row(r) for r in await conn.fetch("SELECT * FROM mw_auto_reload WHERE enabled")]

        return await self._with(read)

    async def set_auto_reload(self, wallet_id: str, enabled: bool, threshold_nusd: int, amount_nusd: int) -> AutoReload:
        async def upsert(conn: asyncpg.Connection) -> AutoReload:
            row = await conn.fetchrow(
                "INSERT INTO mw_auto_reload (wallet_id, enabled, threshold_nusd, amount_nusd) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (wallet_id) DO UPDATE SET enabled = excluded.enabled,"
                " threshold_nusd = excluded.threshold_nusd, amount_nusd = excluded.amount_nusd,"
                " paused_reason = CASE WHEN excluded.enabled THEN NULL ELSE mw_auto_reload.paused_reason END,"
                " updated_at = now() RETURNING *", wallet_id, enabled, threshold_nusd, amount_nusd)
            return _auto_reload_row(row)

        return await self._with(upsert)

    async def save_payment_method(self, wallet_id: str, customer_ref: str, payment_method_ref: str) -> None:
        await self._with(lambda conn: conn.execute(
            "INSERT INTO mw_auto_reload (wallet_id, threshold_nusd, amount_nusd, customer_ref, payment_method_ref)"
            " VALUES ($1, 0, 1, $2, $3) ON CONFLICT (wallet_id) DO UPDATE SET customer_ref = excluded.customer_ref,"
            " payment_method_ref = excluded.payment_method_ref, updated_at = now()",
            wallet_id, customer_ref, payment_method_ref))

    async def claim_auto_reload(self, wallet_id: str, deposit: Deposit) -> bool:
        async def claim(conn: asyncpg.Connection) -> bool:
            row = await conn.fetchrow("SELECT * FROM mw_auto_reload WHERE wallet_id = $1 FOR UPDATE", wallet_id)
            found = None if row is None else _auto_reload_row(row)
            if found is None or not found.ready or found.in_flight_deposit_id is not None:
                return False
            await _insert_deposit(conn, deposit)
            await conn.execute("UPDATE mw_auto_reload SET in_flight_deposit_id = $2 WHERE wallet_id = $1",
                               wallet_id, deposit.deposit_id)
            return True

        return await self._atomic(claim)

    async def finish_auto_reload(self, wallet_id: str, deposit_id: str, declined_reason: str | None) -> None:
        async def finish(conn: asyncpg.Connection) -> None:
            status = await conn.execute(
                "UPDATE mw_auto_reload SET in_flight_deposit_id = NULL, paused_reason = COALESCE($3, paused_reason)"
                " WHERE wallet_id = $1 AND in_flight_deposit_id = $2", wallet_id, deposit_id, declined_reason)
            if status == "UPDATE 1" and declined_reason is not None:
                await emit_in(conn, f"auto_reload.failed:{deposit_id}", wallet_id, "auto_reload.failed",
                              {"deposit_id": deposit_id, "reason": declined_reason})
                await _notify(conn, wallet_id, "auto_reload_paused",
                              f"Auto-reload is paused: the card was declined ({declined_reason}). "
                              "Update the card with a new top-up, then enable auto-reload again.")

        await self._atomic(finish)

    async def create_keyless(self, deposit: Deposit, recovery_hash: str) -> None:
        async def create(conn: asyncpg.Connection) -> None:
            await _insert_deposit(conn, deposit)
            await conn.execute("INSERT INTO mw_keyless (deposit_id, wallet_id, recovery_hash) VALUES ($1, $2, $3)",
                               deposit.deposit_id, deposit.wallet_id, recovery_hash)

        await self._atomic(create)

    async def keyless(self, deposit_id: str) -> Keyless | None:
        async def read(conn: asyncpg.Connection) -> Keyless | None:
            row = await conn.fetchrow("SELECT * FROM mw_keyless WHERE deposit_id = $1", deposit_id)
            return None if row is None else _keyless(row)

        return await self._with(read)

    async def claim_keyless_reveal(self, deposit_id: str) -> bool:
        async def claim(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("UPDATE mw_keyless SET revealed_at = now() WHERE deposit_id = $1"
                                        " AND revealed_at IS NULL", deposit_id)
            return bool(status == "UPDATE 1")

        return await self._with(claim)

    async def set_keyless_keys(self, deposit_id: str, key_id: str, management_key_id: str) -> None:
        await self._with(lambda conn: conn.execute(
            "UPDATE mw_keyless SET key_id = $2, management_key_id = $3 WHERE deposit_id = $1",
            deposit_id, key_id, management_key_id))

    async def add_notification(self, wallet_id: str, kind: str, message: str) -> None:
        await self._with(lambda conn: _notify(conn, wallet_id, kind, message))

    async def notifications(self, wallet_id: str, limit: int) -> list[Notification]:
        async def read(conn: asyncpg.Connection) -> list[Notification]:
            found = await conn.fetch("SELECT * FROM mw_notifications WHERE wallet_id = $1"
                                     " ORDER BY created_at DESC, id DESC LIMIT $2", wallet_id, limit)
            return [Notification(r["id"], r["wallet_id"], r["kind"], r["message"], utc_text_or_none(r["created_at"]) or "")
                    for r in found]

        return await self._with(read)


async def _insert_deposit(conn: asyncpg.Connection, d: Deposit) -> None:
    await conn.execute(
        f"INSERT INTO mw_deposits ({_DEPOSIT_COLUMNS})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::timestamptz)",
        d.deposit_id, d.wallet_id, d.method, d.amount_credited_nusd, d.paid_amount, d.paid_currency, d.status.value,
        d.external_ref, d.discount_nusd, d.payment_ref, d.customer_ref, d.tier, d.purpose, d.paid_cents,
        None if d.credit_expires_at is None else parse_utc(d.credit_expires_at))


async def _deposit_where(conn: asyncpg.Connection, column: str, value: str, lock: bool = False) -> Deposit | None:
    assert column in ("id", "external_ref", "payment_ref"), column
    row = await conn.fetchrow(f"SELECT * FROM mw_deposits WHERE {column} = $1" + (" FOR UPDATE" if lock else ""), value)
    return None if row is None else rows.deposit(row)


async def _mark_refunded(conn: asyncpg.Connection, deposit: Deposit) -> None:
    """A deposit whose whole credit has been taken back (refunds and disputes together) reads `refunded`."""
    memos = [take_back_memo(kind, deposit.deposit_id) for kind in TAKE_BACK_KINDS]
    taken = await conn.fetchval("SELECT COALESCE(SUM(amount_nusd), 0) FROM mw_transfers"
                                " WHERE kind IN ('card_refund', 'chargeback') AND memo = ANY($1::text[])", memos)
    if taken >= deposit.amount_credited_nusd:
        await conn.execute("UPDATE mw_deposits SET status = 'refunded' WHERE id = $1", deposit.deposit_id)


async def _exists(conn: asyncpg.Connection, query: str, *args: Any) -> bool:
    return await conn.fetchval(query, *args) is not None


async def _auto_reload(conn: asyncpg.Connection, wallet_id: str) -> AutoReload | None:
    row = await conn.fetchrow("SELECT * FROM mw_auto_reload WHERE wallet_id = $1", wallet_id)
    return None if row is None else _auto_reload_row(row)


def _auto_reload_row(row: Any) -> AutoReload:
    return AutoReload(row["wallet_id"], bool(row["enabled"]), row["threshold_nusd"], row["amount_nusd"],
                      row["customer_ref"], row["payment_method_ref"], row["paused_reason"], row["in_flight_deposit_id"],
                      utc_text_or_none(row["updated_at"]))


def _keyless(row: Any) -> Keyless:
    return Keyless(row["deposit_id"], row["wallet_id"], row["recovery_hash"], utc_text_or_none(row["revealed_at"]),
                   row["key_id"], row["management_key_id"])


async def _notify(conn: asyncpg.Connection, wallet_id: str, kind: str, message: str) -> None:
    await conn.execute("INSERT INTO mw_notifications (id, wallet_id, kind, message) VALUES ($1, $2, $3, $4)",
                       f"ntf_{secrets.token_hex(8)}", wallet_id, kind, message)
