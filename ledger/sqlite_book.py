"""The book on SQLite: the embedded default, one process.

The stdlib driver runs on one dedicated thread, so the event loop never blocks
on disk and every call is serialised (SQLite has one writer anyway). WAL with
synchronous=FULL makes a commit durable before the caller hears of it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ledger import sqlite_postings as postings
from ledger.book import (
    ApiKeyRecord,
    LedgerTotals,
    Leg,
    Posting,
    Reversal,
    ReversalResult,
    SettledUsage,
    SettleResult,
    Transfer,
    TransferOutcome,
    TransferRecord,
    UsageRecord,
    Wallet,
    check_settle_results,
    migration_files,
    validate_wallet_id,
)
from ledger.cap_settle import settled_cap_spend, with_caps
from ledger.errors import AccountExists, LedgerFailure, LedgerUnavailable, UnknownAccount
from ledger.rows import KEY_SELECT, allowed_models_json, key_limit_values, key_record, settled_usage, transfer_record
from ledger.sqlite_bots import SqliteBots
from ledger.sqlite_history import SqliteHistory
from ledger.sqlite_lots import SqliteLots
from ledger.sqlite_owners import SqliteOwners, add_to_caps
from ledger.sqlite_payments import SqlitePayments
from ledger.sqlite_prices import SqlitePrices
from ledger.sqlite_provider_keys import SqliteProviderKeys
from ledger.sqlite_webhooks import SqliteWebhooks
from ledger.totals import TOTALS_SQL

T = TypeVar("T")

# SQLite primary result codes after which the same call may succeed later,
# because the cause is the file's or the machine's state, not the call:
TRANSIENT_SQLITE_CODES = {
    sqlite3.SQLITE_BUSY: "another connection holds the write lock (database is locked)",
    sqlite3.SQLITE_LOCKED: "a table is locked by this connection's other statement",
    sqlite3.SQLITE_IOERR: "disk I/O error, e.g. a full or flaky device",
    sqlite3.SQLITE_FULL: "the disk is full; freeing space fixes it",
    sqlite3.SQLITE_CANTOPEN: "the file cannot be opened right now (directory, descriptors)",
    sqlite3.SQLITE_NOMEM: "out of memory",
    sqlite3.SQLITE_PROTOCOL: "a WAL lock race between processes",
}
# Anything else is permanent: "no such table" (not migrated), constraint
# violations, a corrupt or read-only file, a misuse: a retry fails the same way.


def classify(exc: sqlite3.Error) -> LedgerUnavailable | LedgerFailure:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF  # extended codes carry the primary in the low byte
    if primary in TRANSIENT_SQLITE_CODES:
        return LedgerUnavailable(f"SQLite unavailable ({exc.sqlite_errorname}): {exc}")
    if code is None and isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
        return LedgerUnavailable(f"SQLite unavailable: {exc}")
    return LedgerFailure(f"SQLite refused the operation ({getattr(exc, 'sqlite_errorname', type(exc).__name__)}): {exc}")


class SqliteBook(SqliteOwners, SqliteHistory, SqliteLots, SqlitePayments, SqliteBots, SqliteProviderKeys,
        SqliteWebhooks, SqlitePrices):
    def __init__(self, path: str) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mw-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            if self._conn is None:
                self._conn = self._open()
            return fn(self._conn)
        except sqlite3.Error as exc:
            raise classify(exc) from exc

    async def ping(self) -> None:
        """One statement on the ledger's thread: LedgerUnavailable if it fails."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.row_factory = sqlite3.Row
        return conn

    async def migrate(self) -> list[int]:
        return await self._run(_migrate)

    async def pending_migrations(self) -> list[int]:
        """Versions migrate() would apply; reads only."""
        def read(conn: sqlite3.Connection) -> list[int]:
            exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mw_schema_migrations'").fetchone()
            done = {row[0] for row in conn.execute("SELECT version FROM mw_schema_migrations")} if exists else set()
            return [version for version, _ in migration_files("sqlite") if version not in done]

        return await self._run(read)

    async def create_wallet(self, wallet_id: str, name: str | None = None) -> Wallet:
        validate_wallet_id(wallet_id)

        def create(conn: sqlite3.Connection) -> Wallet:
            try:
                conn.execute("INSERT INTO mw_accounts (id, kind, name) VALUES (?, 'wallet', ?)", (wallet_id, name))
            except sqlite3.IntegrityError as exc:
                raise AccountExists(f"wallet {wallet_id!r} exists") from exc
            return Wallet(wallet_id, name, 0, 0)

        return await self._run(create)

    async def wallet(self, wallet_id: str) -> Wallet | None:
        def read(conn: sqlite3.Connection) -> Wallet | None:
            row = conn.execute(
                "SELECT id, name, balance_nusd, version FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (wallet_id,)
            ).fetchone()
            return None if row is None else Wallet(row[0], row[1], row[2], row[3])

        return await self._run(read)

    async def transfer(self, transfer: Transfer) -> TransferOutcome:
        """A one-leg posting whose posting id is the transfer id."""
        leg = Leg(transfer.debit_account, transfer.credit_account, transfer.amount_nusd)
        return await self.post(Posting(transfer.transfer_id, transfer.kind, (leg,), transfer.memo, transfer.request_id))

    async def post(self, posting: Posting) -> TransferOutcome:
        return await self._run(lambda conn: postings.atomic(conn, lambda c: postings.post(c, posting)))

    async def reverse(self, reversal: Reversal) -> ReversalResult:
        return await self._run(lambda conn: postings.atomic(conn, lambda c: postings.reverse(c, reversal)))

    async def owed(self, account_id: str) -> int:
        return await self._run(lambda conn: postings.owed(conn, account_id))

    async def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]:
        if not items:
            return []
        def settle(conn: sqlite3.Connection) -> list[SettleResult]:
            results = postings.settle_batch(conn, items)
            return with_caps(items, results, add_to_caps(conn, settled_cap_spend(items, results)))

        results = await self._run(lambda conn: postings.atomic(conn, settle))
        check_settle_results(items, results)
        return results

    async def usage(self, request_id: str) -> SettledUsage | None:
        def read(conn: sqlite3.Connection) -> SettledUsage | None:
            row = conn.execute("SELECT * FROM mw_usage WHERE request_id = ?", (request_id,)).fetchone()
            return None if row is None else settled_usage(dict(row))

        return await self._run(read)

    async def transfers_of(self, account_id: str, limit: int = 50) -> list[TransferRecord]:
        def read(conn: sqlite3.Connection) -> list[TransferRecord]:
            rows = conn.execute(
                "SELECT * FROM mw_transfers WHERE debit_account = ? OR credit_account = ?"
                " ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (account_id, account_id, limit),
            ).fetchall()
            return [transfer_record(dict(row)) for row in rows]

        return await self._run(read)

    async def create_key(self, key: ApiKeyRecord) -> None:
        def create(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (key.wallet_id,)).fetchone() is None:
                raise UnknownAccount(f"no wallet {key.wallet_id!r}")
            if key.member_id is not None and conn.execute(
                    "SELECT 1 FROM mw_members WHERE id = ? AND wallet_id = ? AND status = 'active'",
                    (key.member_id, key.wallet_id)).fetchone() is None:
                raise UnknownAccount(f"no active member {key.member_id!r} in wallet {key.wallet_id!r}")
            if key.bot_id is not None and conn.execute(
                    "SELECT 1 FROM mw_bots WHERE id = ? AND wallet_id = ? AND deleted_at IS NULL",
                    (key.bot_id, key.wallet_id)).fetchone() is None:
                raise UnknownAccount(f"no bot {key.bot_id!r} in wallet {key.wallet_id!r}")
            conn.execute(
                "INSERT INTO mw_keys (id, secret_hash, prefix, wallet_id, name, bot, member_id, expires_at, allowed_models,"
                " bot_id, total_limit_nusd, daily_limit_nusd, monthly_limit_nusd, rpm_max, tpm_max, parallel_max, ip_allow)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.key_id, key.secret_hash, key.prefix, key.wallet_id, key.name, key.bot, key.member_id, key.expires_at,
                 allowed_models_json(key), *key_limit_values(key)),
            )

        await self._run(create)

    async def key_by_hash(self, secret_hash: str) -> ApiKeyRecord | None:
        def read(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute(f"{KEY_SELECT} WHERE k.secret_hash = ?", (secret_hash,)).fetchone()
            return None if row is None else key_record(dict(row))

        return await self._run(read)

    async def list_keys(self, wallet_id: str | None = None) -> list[ApiKeyRecord]:
        def read(conn: sqlite3.Connection) -> list[ApiKeyRecord]:
            if wallet_id is None:
                rows = conn.execute(f"{KEY_SELECT} ORDER BY k.created_at, k.id").fetchall()
            else:
                rows = conn.execute(f"{KEY_SELECT} WHERE k.wallet_id = ? ORDER BY k.created_at, k.id",
                                    (wallet_id,)).fetchall()
            return [key_record(dict(row)) for row in rows]

        return await self._run(read)

    async def revoke_key(self, key_id: str) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE mw_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                " WHERE id = ? AND revoked_at IS NULL",
                (key_id,),
            )
            return cursor.rowcount == 1

        return await self._run(revoke)

    async def totals(self) -> LedgerTotals:
        return await self._run(lambda conn: LedgerTotals(*conn.execute(TOTALS_SQL).fetchone()))

    async def close(self) -> None:
        def close(conn: sqlite3.Connection) -> None:
            conn.close()

        if self._conn is not None:
            await self._run(close)
            self._conn = None
        self._executor.shutdown(wait=True)


def _migrate(conn: sqlite3.Connection) -> list[int]:
    conn.execute("CREATE TABLE IF NOT EXISTS mw_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT version FROM mw_schema_migrations")}
    applied = []
    # A table rebuild (drop a CHECK: create, copy, drop, rename) needs foreign keys
    # off; they are checked as a whole before each commit instead. The pragma is a
    # no-op inside a transaction, so it is set around it.
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        for version, sql in migration_files("sqlite"):
            if version not in done:
                _apply(conn, version, sql)
                applied.append(version)
    finally:
        conn.execute("PRAGMA foreign_keys=ON")
    return applied


def _apply(conn: sqlite3.Connection, version: int, sql: str) -> None:
    def run(conn: sqlite3.Connection) -> None:
        for statement in _split_sql(sql):
            conn.execute(statement)
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            raise LedgerFailure(f"migration {version:04d} would break foreign keys: {[tuple(row) for row in broken][:5]}")
        conn.execute("INSERT INTO mw_schema_migrations VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (version,))

    postings.atomic(conn, run)


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements; triggers contain ';' inside BEGIN..END."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        if line.lstrip().startswith("--"):
            continue
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    assert not current.strip(), f"incomplete SQL statement: {current!r}"
    return statements
