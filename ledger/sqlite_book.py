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

from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    SHORTFALL_ACCOUNT,
    ApiKeyRecord,
    LedgerTotals,
    SettledUsage,
    SettleOutcome,
    SettleResult,
    Transfer,
    TransferKind,
    TransferOutcome,
    TransferRecord,
    UsageRecord,
    Wallet,
    check_funding_credit,
    migration_files,
    validate_wallet_id,
)
from ledger.errors import (
    AccountExists,
    IdempotencyConflict,
    InsufficientFunds,
    LedgerFailure,
    LedgerUnavailable,
    UnknownAccount,
)
from ledger.rows import USAGE_COLUMNS, key_record, settled_usage, transfer_record

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


class SqliteBook:
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
        return await self._run(lambda conn: _transfer(conn, transfer))

    async def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]:
        if not items:
            return []
        return await self._run(lambda conn: _settle_batch(conn, items))

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
            conn.execute(
                "INSERT INTO mw_keys (id, secret_hash, prefix, wallet_id, name, bot) VALUES (?, ?, ?, ?, ?, ?)",
                (key.key_id, key.secret_hash, key.prefix, key.wallet_id, key.name, key.bot),
            )

        await self._run(create)

    async def key_by_hash(self, secret_hash: str) -> ApiKeyRecord | None:
        def read(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            row = conn.execute("SELECT * FROM mw_keys WHERE secret_hash = ?", (secret_hash,)).fetchone()
            return None if row is None else key_record(dict(row))

        return await self._run(read)

    async def list_keys(self, wallet_id: str | None = None) -> list[ApiKeyRecord]:
        def read(conn: sqlite3.Connection) -> list[ApiKeyRecord]:
            if wallet_id is None:
                rows = conn.execute("SELECT * FROM mw_keys ORDER BY created_at, id").fetchall()
            else:
                rows = conn.execute("SELECT * FROM mw_keys WHERE wallet_id = ? ORDER BY created_at, id", (wallet_id,)).fetchall()
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
        return await self._run(_totals)

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
    for version, sql in migration_files("sqlite"):
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO mw_schema_migrations VALUES (?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))", (version,)
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(version)
    return applied


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


def _transfer(conn: sqlite3.Connection, transfer: Transfer) -> TransferOutcome:
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = _insert_transfer(conn, transfer)
        conn.execute("COMMIT")
        return outcome
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _insert_transfer(conn: sqlite3.Connection, transfer: Transfer) -> TransferOutcome:
    prior = conn.execute("SELECT * FROM mw_transfers WHERE id = ?", (transfer.transfer_id,)).fetchone()
    if prior is not None:
        if transfer_record(dict(prior)).transfer != transfer:
            raise IdempotencyConflict(f"transfer {transfer.transfer_id!r} exists with different content")
        return TransferOutcome.EXISTS
    kinds: dict[str, str] = {}
    for account in (transfer.debit_account, transfer.credit_account):
        row = conn.execute("SELECT kind FROM mw_accounts WHERE id = ?", (account,)).fetchone()
        if row is None:
            raise UnknownAccount(f"no account {account!r}")
        kinds[account] = row[0]
    try:
        conn.execute(
            "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id, memo)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (transfer.transfer_id, transfer.debit_account, transfer.credit_account, transfer.amount_nusd,
             transfer.kind.value, transfer.request_id, transfer.memo),
        )
    except sqlite3.IntegrityError as exc:
        if "mw_accounts_no_overdraft" in str(exc):
            raise InsufficientFunds(f"{transfer.debit_account!r} cannot pay {transfer.amount_nusd} nUSD") from exc
        raise
    # After the insert, so an overdraft is reported as such; the caller rolls back.
    check_funding_credit(transfer, kinds[transfer.credit_account])
    return TransferOutcome.CREATED


def _settle_batch(conn: sqlite3.Connection, items: Sequence[UsageRecord]) -> list[SettleResult]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [_settle_one(conn, item) for item in items]
        conn.execute("COMMIT")
        return results
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_USAGE_INSERT = (
    f"INSERT INTO mw_usage ({', '.join(USAGE_COLUMNS)}, charged_nusd, shortfall_nusd)"
    f" VALUES ({', '.join('?' * (len(USAGE_COLUMNS) + 2))})"
)
_TRANSFER_INSERT = (
    "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id) VALUES (?, ?, ?, ?, ?, ?)"
)


def _settle_one(conn: sqlite3.Connection, item: UsageRecord) -> SettleResult:
    """The same steps as mw_settle_batch() in the Postgres migration.

    Few statements on purpose: this runs on a thread that must win the GIL
    back from a busy event loop before each one. Foreign keys, the primary
    keys and the overdraft CHECK still guard every write.
    """
    prior = conn.execute(
        "SELECT wallet_id, cost_nusd, charged_nusd, shortfall_nusd FROM mw_usage WHERE request_id = ?", (item.request_id,)
    ).fetchone()
    if prior is not None:
        balance, version = _balance(conn, prior[0])
        if prior[1] == item.cost_nusd and prior[0] == item.wallet_id:
            return SettleResult(item.request_id, SettleOutcome.REPLAY, prior[2], prior[3], balance, version)
        return SettleResult(item.request_id, SettleOutcome.CONFLICT, 0, 0, balance, version)
    row = conn.execute(
        "SELECT balance_nusd, version FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (item.wallet_id,)
    ).fetchone()
    if row is None:
        return SettleResult(item.request_id, SettleOutcome.UNKNOWN_WALLET, 0, 0, 0, 0)
    balance, version = row
    charged = min(item.cost_nusd, balance)
    shortfall = item.cost_nusd - charged
    if charged > 0:
        conn.execute(_TRANSFER_INSERT, (item.request_id, item.wallet_id, REVENUE_ACCOUNT, charged, TransferKind.USAGE.value, item.request_id))
        balance, version = balance - charged, version + 1  # what the trigger just did
    if shortfall > 0:
        conn.execute(_TRANSFER_INSERT, (f"{item.request_id}:shortfall", SHORTFALL_ACCOUNT, REVENUE_ACCOUNT, shortfall,
                                        TransferKind.SHORTFALL.value, item.request_id))
    conn.execute(_USAGE_INSERT, (*(getattr(item, name) for name in USAGE_COLUMNS), charged, shortfall))
    return SettleResult(item.request_id, SettleOutcome.SETTLED, charged, shortfall, balance, version)


def _balance(conn: sqlite3.Connection, account_id: str) -> tuple[int, int]:
    row = conn.execute("SELECT balance_nusd, version FROM mw_accounts WHERE id = ?", (account_id,)).fetchone()
    return (row[0], row[1]) if row is not None else (0, 0)


def _totals(conn: sqlite3.Connection) -> LedgerTotals:
    def one(sql: str) -> int:
        value: int = conn.execute(sql).fetchone()[0]
        return value

    return LedgerTotals(
        balance_sum_nusd=one("SELECT COALESCE(SUM(balance_nusd), 0) FROM mw_accounts"),
        negative_wallets=one("SELECT COUNT(*) FROM mw_accounts WHERE kind = 'wallet' AND balance_nusd < 0"),
        transfer_count=one("SELECT COUNT(*) FROM mw_transfers"),
        revenue_nusd=one(f"SELECT balance_nusd FROM mw_accounts WHERE id = '{REVENUE_ACCOUNT}'"),
        shortfall_nusd=one(f"SELECT balance_nusd FROM mw_accounts WHERE id = '{SHORTFALL_ACCOUNT}'"),
        funding_nusd=one(f"SELECT balance_nusd FROM mw_accounts WHERE id = '{FUNDING_ACCOUNT}'"),
        usage_charged_nusd=one("SELECT COALESCE(SUM(charged_nusd), 0) FROM mw_usage"),
        usage_shortfall_nusd=one("SELECT COALESCE(SUM(shortfall_nusd), 0) FROM mw_usage"),
        balance_mismatches=one(
            "SELECT COUNT(*) FROM mw_accounts a WHERE a.balance_nusd <>"
            " COALESCE((SELECT SUM(amount_nusd) FROM mw_transfers WHERE credit_account = a.id), 0)"
            " - COALESCE((SELECT SUM(amount_nusd) FROM mw_transfers WHERE debit_account = a.id), 0)"
        ),
    )
