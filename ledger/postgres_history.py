"""History on Postgres: a wallet's entries page by page, and its figures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from ledger import owner_rows as rows
from ledger.history import Entry, EntryQuery, Spend, UsageSummary, WalletFigures
from ledger.owners import Page
from ledger.postgres_access import PostgresAccess
from ledger.times import parse_utc, utc_text

# One entry per posting: the wallet's side of it (legs to or from the wallet, netted).
_ENTRY_COLUMNS = (
    "posting_id, MIN(kind) AS kind, MIN(created_at) AS created_at, MAX(request_id) AS request_id, MAX(memo) AS memo,"
    " SUM(CASE WHEN credit_account = $1 THEN amount_nusd ELSE -amount_nusd END)::bigint AS amount_nusd,"
    " MIN(CASE WHEN credit_account = $1 THEN debit_account ELSE credit_account END) AS counterparty"
)


class PostgresHistory(PostgresAccess):
    """Mixed into PostgresBook, which provides _with."""

    async def entries(self, query: EntryQuery) -> Page[Entry]:
        return await self._with(lambda conn: _entries(conn, query))

    async def transfer_kinds(self) -> dict[str, str]:
        async def read(conn: asyncpg.Connection) -> dict[str, str]:
            return {r[0]: r[1] for r in await conn.fetch("SELECT kind, description FROM mw_transfer_kinds ORDER BY kind")}

        return await self._with(read)

    async def wallet_figures(self, wallet_id: str, month_start: datetime) -> WalletFigures:
        async def read(conn: asyncpg.Connection) -> WalletFigures:
            moved = await conn.fetchrow(
                "SELECT"
                " COALESCE(SUM(amount_nusd) FILTER (WHERE kind = 'deposit' AND credit_account = $1), 0)::bigint,"
                " COALESCE(SUM(amount_nusd) FILTER (WHERE kind = 'usage' AND debit_account = $1), 0)::bigint,"
                " COALESCE(SUM(amount_nusd) FILTER (WHERE kind = 'refund' AND credit_account = $1), 0)::bigint"
                " FROM mw_transfers WHERE debit_account = $1 OR credit_account = $1", wallet_id)
            requests = await conn.fetchval("SELECT COUNT(*) FROM mw_usage WHERE wallet_id = $1", wallet_id)
            month = await conn.fetchrow(
                "SELECT COUNT(*), COALESCE(SUM(cost_nusd), 0)::bigint, COALESCE(SUM(charged_nusd), 0)::bigint"
                " FROM mw_usage WHERE wallet_id = $1 AND created_at >= $2", wallet_id, month_start)
            return WalletFigures(moved[0], moved[1], moved[2], requests, Spend(*month))

        return await self._with(read)

    async def key_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]:
        return await self._with(lambda conn: _spend_by(conn, "u.key_id", wallet_id, since))

    async def member_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]:
        return await self._with(lambda conn: _spend_by(conn, "k.member_id", wallet_id, since))


async def _spend_by(conn: asyncpg.Connection, column: str, wallet_id: str, since: datetime) -> dict[str, Spend]:
    found = await conn.fetch(
        f"SELECT {column}, COUNT(*), COALESCE(SUM(u.cost_nusd), 0)::bigint, COALESCE(SUM(u.charged_nusd), 0)::bigint"
        f" FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id WHERE u.wallet_id = $1 AND u.created_at >= $2"
        f" AND {column} IS NOT NULL GROUP BY {column}", wallet_id, since)
    return {row[0]: Spend(row[1], row[2], row[3]) for row in found}


async def _entries(conn: asyncpg.Connection, query: EntryQuery) -> Page[Entry]:
    where, args = _entry_filter(query)
    total = await conn.fetchval(f"SELECT COUNT(DISTINCT posting_id) FROM mw_transfers WHERE {where}", *args)
    having = ""
    if query.cursor is not None:
        created_at, posting_id = rows.decode_cursor(query.cursor, 2)
        args += [parse_utc(created_at), posting_id]
        having = f" HAVING (MIN(created_at), posting_id) < (${len(args) - 1}::timestamptz, ${len(args)})"
    args.append(query.limit + 1)
    found = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM mw_transfers WHERE {where} GROUP BY posting_id{having}"
        f" ORDER BY MIN(created_at) DESC, posting_id DESC LIMIT ${len(args)}", *args)
    page = found[:query.limit]
    usage = await _usage_of(conn, [row["request_id"] for row in page if row["kind"] == "usage" and row["request_id"]])
    items = tuple(_entry(row, usage.get(row["request_id"])) for row in page)
    last = page[-1] if len(found) > query.limit else None
    return Page(items, total, rows.encode_cursor(last["created_at"].isoformat(), last["posting_id"]) if last else None)


def _entry_filter(query: EntryQuery) -> tuple[str, list[Any]]:
    where = "(debit_account = $1 OR credit_account = $1)"
    args: list[Any] = [query.wallet_id]
    if query.kinds:
        args.append(list(query.kinds))
        where += f" AND kind = ANY(${len(args)}::text[])"
    if query.since is not None:
        args.append(query.since)
        where += f" AND created_at >= ${len(args)}"
    if query.until is not None:
        args.append(query.until)
        where += f" AND created_at < ${len(args)}"
    if query.key_ids is not None:
        args.append(list(query.key_ids))
        where += (" AND kind = 'usage' AND EXISTS (SELECT 1 FROM mw_usage u WHERE u.request_id = mw_transfers.request_id"
                  f" AND u.key_id = ANY(${len(args)}::text[]))")
    return where, args


async def _usage_of(conn: asyncpg.Connection, request_ids: list[str]) -> dict[str, UsageSummary]:
    if not request_ids:
        return {}
    found = await conn.fetch(
        "SELECT request_id, key_id, model, endpoint, status, prompt_tokens, cached_tokens, completion_tokens, cost_nusd"
        " FROM mw_usage WHERE request_id = ANY($1::text[])", request_ids)
    return {row[0]: UsageSummary(*row[1:]) for row in found}


def _entry(row: asyncpg.Record, usage: UsageSummary | None) -> Entry:
    return Entry(row["posting_id"], row["kind"], row["amount_nusd"], row["counterparty"], utc_text(row["created_at"]),
                 row["posting_id"], row["request_id"], row["memo"], usage)
