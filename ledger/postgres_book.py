"""The book on Postgres (asyncpg): production, shared by many gateway processes.

Settlement is one round trip per batch: mw_settle_batch() (see the migration)
does the idempotency check, the debit, any shortfall and the usage row for every
item inside one transaction. asyncpg errors are translated here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
import orjson

from ledger import postgres_postings as postings
from ledger.book import (
    ApiKeyRecord,
    LedgerTotals,
    Leg,
    Posting,
    Reversal,
    ReversalResult,
    SettledUsage,
    SettleOutcome,
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
from ledger.errors import AccountExists, LedgerError, LedgerFailure, LedgerUnavailable, UnknownAccount
from ledger.postgres_bots import PostgresBots
from ledger.postgres_history import PostgresHistory
from ledger.postgres_lots import PostgresLots
from ledger.postgres_owners import PostgresOwners, add_to_caps
from ledger.postgres_payments import PostgresPayments
from ledger.postgres_postings import text_times as _text_times
from ledger.postgres_prices import PostgresPrices
from ledger.postgres_provider_keys import PostgresProviderKeys
from ledger.postgres_webhooks import PostgresWebhooks
from ledger.postings import check_posting_replay, receivable_account, reversal_replay
from ledger.rows import KEY_SELECT, allowed_models_json, key_limit_values, key_record, settled_usage, transfer_record
from ledger.times import parse_utc
from ledger.totals import TOTALS_SQL

T = TypeVar("T")
# close() waits this long for in-use connections to be given back, then cuts them.
POOL_CLOSE_TIMEOUT_S = 5.0

# SQLSTATE classes (the first two characters) after which the same call may
# succeed if retried, because the cause is the server's state, not the call:
TRANSIENT_SQLSTATE_CLASSES = {
    "08": "connection exception: the connection failed or was lost",
    "53": "insufficient resources: too many connections, out of memory or disk, for now",
    "57": "operator intervention: admin shutdown, crash recovery, cannot connect now, query canceled",
    "40": "transaction rollback: serialization failure or deadlock; the transaction was undone",
    "55": "object not in prerequisite state: e.g. a lock not available right now",
    "58": "system error: an I/O error outside PostgreSQL",
    "HV": "foreign data wrapper error: the remote side, usually unreachable",
}
# Every other class is permanent: the call itself is wrong for this database
# (42 undefined table = not migrated, 23 integrity, 22 data, 2x state, XX
# internal/corruption) and a retry would fail the same way.


def classify(exc: BaseException, context: str) -> LedgerUnavailable | LedgerFailure:
    """asyncpg's error -> LedgerUnavailable (retry) or LedgerFailure (don't)."""
    if isinstance(exc, (OSError, TimeoutError)):
        # Refused, reset, unreachable, or no answer within the command timeout.
        return LedgerUnavailable(f"{context} unavailable: {exc!r}")
    if isinstance(exc, asyncpg.InterfaceError):
        # Client-side: connection closed under us, pool closing or closed.
        return LedgerUnavailable(f"{context} unavailable: {exc}")
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
        return LedgerUnavailable(f"{context} unavailable ({sqlstate}): {exc}")
    return LedgerFailure(f"{context} refused the operation ({sqlstate or type(exc).__name__}): {exc}")


# Serialises migrations when several gateway processes start at once.
MIGRATION_LOCK_ID = 0x6D77_6D69


class PostgresBook(PostgresOwners, PostgresHistory, PostgresLots, PostgresPayments, PostgresBots, PostgresProviderKeys,
        PostgresWebhooks, PostgresPrices):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def connect(cls, dsn: str, *, pool_max: int = 10) -> PostgresBook:
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=pool_max, command_timeout=30)
        except Exception as exc:
            raise classify(exc, "Postgres (connecting)") from exc
        assert pool is not None
        return cls(pool)

    async def _with(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except LedgerError:
            raise  # already translated inside fn (AccountExists, UnknownAccount, ...)
        except (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
            raise classify(exc, "Postgres") from exc

    async def ping(self) -> None:
        """One round trip on a pooled connection: LedgerUnavailable if it fails."""
        await self._with(lambda conn: conn.fetchval("SELECT 1"))

    async def migrate(self) -> list[int]:
        async def run(conn: asyncpg.Connection) -> list[int]:
            applied = []
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS mw_schema_migrations"
                    " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r[0] for r in await conn.fetch("SELECT version FROM mw_schema_migrations")}
                for version, sql in migration_files("postgres"):
                    if version not in done:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO mw_schema_migrations (version) VALUES ($1)", version)
                        applied.append(version)
            return applied

        return await self._with(run)

    async def pending_migrations(self) -> list[int]:
        """Versions migrate() would apply; reads only (serve checks, never migrates)."""
        async def run(conn: asyncpg.Connection) -> list[int]:
            if await conn.fetchval("SELECT to_regclass('mw_schema_migrations')") is None:
                done: set[int] = set()
            else:
                done = {r[0] for r in await conn.fetch("SELECT version FROM mw_schema_migrations")}
            return [version for version, _ in migration_files("postgres") if version not in done]

        return await self._with(run)

    async def create_wallet(self, wallet_id: str, name: str | None = None) -> Wallet:
        validate_wallet_id(wallet_id)

        async def run(conn: asyncpg.Connection) -> Wallet:
            try:
                await conn.execute("INSERT INTO mw_accounts (id, kind, name) VALUES ($1, 'wallet', $2)", wallet_id, name)
            except asyncpg.UniqueViolationError as exc:
                raise AccountExists(f"wallet {wallet_id!r} exists") from exc
            return Wallet(wallet_id, name, 0, 0)

        return await self._with(run)

    async def wallet(self, wallet_id: str) -> Wallet | None:
        async def run(conn: asyncpg.Connection) -> Wallet | None:
            row = await conn.fetchrow(
                "SELECT id, name, balance_nusd, version FROM mw_accounts WHERE id = $1 AND kind = 'wallet'", wallet_id
            )
            return None if row is None else Wallet(row[0], row[1], row[2], row[3])

        return await self._with(run)

    async def transfer(self, transfer: Transfer) -> TransferOutcome:
        """A one-leg posting whose posting id is the transfer id."""
        leg = Leg(transfer.debit_account, transfer.credit_account, transfer.amount_nusd)
        return await self.post(Posting(transfer.transfer_id, transfer.kind, (leg,), transfer.memo, transfer.request_id))

    async def post(self, posting: Posting) -> TransferOutcome:
        transfers = posting.transfers()

        async def run(conn: asyncpg.Connection) -> TransferOutcome:
            try:
                async with conn.transaction():
                    return await postings.write_posting(conn, posting.posting_id, transfers)
            except asyncpg.UniqueViolationError:
                # A concurrent twin committed first: answer as a retry would.
                stored = await postings.stored_posting(conn, posting.posting_id, [t.transfer_id for t in transfers])
                return check_posting_replay(posting.posting_id, transfers, stored)

        return await self._with(run)

    async def reverse(self, reversal: Reversal) -> ReversalResult:
        async def run(conn: asyncpg.Connection) -> ReversalResult:
            try:
                async with conn.transaction():
                    return await postings.reverse(conn, reversal)
            except asyncpg.UniqueViolationError:
                return reversal_replay(reversal, await postings.stored_posting(conn, reversal.reversal_id, ()))

        return await self._with(run)

    async def owed(self, account_id: str) -> int:
        async def run(conn: asyncpg.Connection) -> int:
            balance = await conn.fetchval("SELECT balance_nusd FROM mw_accounts WHERE id = $1", receivable_account(account_id))
            return -(balance or 0)

        return await self._with(run)

    async def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]:
        if not items:
            return []
        payload = orjson.dumps([item.as_dict() for item in items]).decode()

        async def settle(conn: asyncpg.Connection) -> list[SettleResult]:
            rows = await conn.fetch("SELECT * FROM mw_settle_batch($1::jsonb)", payload)
            return [
                SettleResult(r["request_id"], SettleOutcome(r["outcome"]), r["charged_nusd"], r["shortfall_nusd"],
                             r["balance_nusd"], r["version"])
                for r in rows
            ]

        async def run(conn: asyncpg.Connection) -> list[SettleResult]:
            if not any(item.caps for item in items):
                return await settle(conn)  # one statement, one round trip: the usual batch
            async with conn.transaction():  # capped requests: their caps move in the same transaction
                results = await settle(conn)
                return with_caps(items, results, await add_to_caps(conn, settled_cap_spend(items, results)))

        results = await self._with(run)
        check_settle_results(items, results)
        return results

    async def usage(self, request_id: str) -> SettledUsage | None:
        async def run(conn: asyncpg.Connection) -> SettledUsage | None:
            row = await conn.fetchrow("SELECT * FROM mw_usage WHERE request_id = $1", request_id)
            return None if row is None else settled_usage(_text_times(row))

        return await self._with(run)

    async def transfers_of(self, account_id: str, limit: int = 50) -> list[TransferRecord]:
        async def run(conn: asyncpg.Connection) -> list[TransferRecord]:
            rows = await conn.fetch(
                "SELECT * FROM mw_transfers WHERE debit_account = $1 OR credit_account = $1"
                " ORDER BY created_at DESC, id DESC LIMIT $2",
                account_id, limit,
            )
            return [transfer_record(_text_times(r)) for r in rows]

        return await self._with(run)

    async def create_key(self, key: ApiKeyRecord) -> None:
        async def run(conn: asyncpg.Connection) -> None:
            # Keys belong to wallets only: the foreign key alone would accept sys:revenue.
            status = await conn.execute(
                "INSERT INTO mw_keys (id, secret_hash, prefix, wallet_id, name, bot, member_id, expires_at, allowed_models,"
                " bot_id, total_limit_nusd, daily_limit_nusd, monthly_limit_nusd, rpm_max, tpm_max, parallel_max, ip_allow)"
                " SELECT $1, $2, $3, $4, $5, $6, $7, $8::timestamptz, $9, $10, $11, $12, $13, $14, $15, $16, $17"
                " WHERE EXISTS"
                " (SELECT 1 FROM mw_accounts WHERE id = $4 AND kind = 'wallet') AND ($7::text IS NULL OR EXISTS"
                " (SELECT 1 FROM mw_members WHERE id = $7 AND wallet_id = $4 AND status = 'active'))"
                " AND ($10::text IS NULL OR EXISTS"
                " (SELECT 1 FROM mw_bots WHERE id = $10 AND wallet_id = $4 AND deleted_at IS NULL))",
                key.key_id, key.secret_hash, key.prefix, key.wallet_id, key.name, key.bot, key.member_id,
                None if key.expires_at is None else parse_utc(key.expires_at), allowed_models_json(key),
                *key_limit_values(key),
            )
            if status != "INSERT 0 1":
                raise UnknownAccount(f"no wallet {key.wallet_id!r}" + (
                    "" if key.member_id is None else f" with an active member {key.member_id!r}") + (
                    "" if key.bot_id is None else f" with a bot {key.bot_id!r}"))

        await self._with(run)

    async def key_by_hash(self, secret_hash: str) -> ApiKeyRecord | None:
        async def run(conn: asyncpg.Connection) -> ApiKeyRecord | None:
            row = await conn.fetchrow(f"{KEY_SELECT} WHERE k.secret_hash = $1", secret_hash)
            return None if row is None else key_record(_text_times(row))

        return await self._with(run)

    async def list_keys(self, wallet_id: str | None = None) -> list[ApiKeyRecord]:
        async def run(conn: asyncpg.Connection) -> list[ApiKeyRecord]:
            rows = await conn.fetch(
                f"{KEY_SELECT} WHERE $1::text IS NULL OR k.wallet_id = $1 ORDER BY k.created_at, k.id", wallet_id
            )
            return [key_record(_text_times(r)) for r in rows]

        return await self._with(run)

    async def revoke_key(self, key_id: str) -> bool:
        async def run(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(
                "UPDATE mw_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
            )
            return status == "UPDATE 1"

        return await self._with(run)

    async def totals(self) -> LedgerTotals:
        async def run(conn: asyncpg.Connection) -> LedgerTotals:
            return LedgerTotals(*await conn.fetchrow(TOTALS_SQL))

        return await self._with(run)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), POOL_CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()  # a server that stopped answering must not hold up shutdown
