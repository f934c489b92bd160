"""History on SQLite: a wallet's entries page by page, and its figures."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from ledger import owner_rows as rows
from ledger.history import Entry, EntryQuery, Spend, UsageSummary, WalletFigures
from ledger.owners import Page
from ledger.sqlite_access import SqliteAccess
from ledger.times import utc_text

# One entry per posting: the wallet's side of it (legs to or from the wallet, netted).
_ENTRY_COLUMNS = (
    "posting_id, MIN(kind) AS kind, MIN(created_at) AS created_at, MAX(request_id) AS request_id, MAX(memo) AS memo,"
    " SUM(CASE WHEN credit_account = :wallet THEN amount_nusd ELSE -amount_nusd END) AS amount_nusd,"
    " MIN(CASE WHEN credit_account = :wallet THEN debit_account ELSE credit_account END) AS counterparty"
)


class SqliteHistory(SqliteAccess):
    """Mixed into SqliteBook, which provides _run."""

    async def entries(self, query: EntryQuery) -> Page[Entry]:
        return await self._run(lambda conn: _entries(conn, query))

    async def transfer_kinds(self) -> dict[str, str]:
        def read(conn: sqlite3.Connection) -> dict[str, str]:
            return {r[0]: r[1] for r in conn.execute("SELECT kind, description FROM mw_transfer_kinds ORDER BY kind")}

        return await self._run(read)

    async def wallet_figures(self, wallet_id: str, month_start: datetime) -> WalletFigures:
        def read(conn: sqlite3.Connection) -> WalletFigures:
            moved = conn.execute(
                "SELECT"
                " COALESCE(SUM(CASE WHEN kind = 'deposit' AND credit_account = :w THEN amount_nusd END), 0),"
                " COALESCE(SUM(CASE WHEN kind = 'usage' AND debit_account = :w THEN amount_nusd END), 0),"
                " COALESCE(SUM(CASE WHEN kind = 'refund' AND credit_account = :w THEN amount_nusd END), 0)"
                " FROM mw_transfers WHERE debit_account = :w OR credit_account = :w", {"w": wallet_id}).fetchone()
            requests = conn.execute("SELECT COUNT(*) FROM mw_usage WHERE wallet_id = ?", (wallet_id,)).fetchone()[0]
            month = conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_nusd), 0) FROM mw_usage"
                " WHERE wallet_id = ? AND created_at >= ?", (wallet_id, utc_text(month_start))).fetchone()
            return WalletFigures(moved[0], moved[1], moved[2], requests, Spend(*month))

        return await self._run(read)

    async def key_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]:
        return await self._run(lambda conn: _spend_by(conn, "u.key_id", wallet_id, since))

    async def member_spend(self, wallet_id: str, since: datetime) -> dict[str, Spend]:
        return await self._run(lambda conn: _spend_by(conn, "k.member_id", wallet_id, since))


def _spend_by(conn: sqlite3.Connection, column: str, wallet_id: str, since: datetime) -> dict[str, Spend]:
    found = conn.execute(
        f"SELECT {column}, COUNT(*), COALESCE(SUM(u.cost_nusd), 0), COALESCE(SUM(u.charged_nusd), 0)"
        f" FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id WHERE u.wallet_id = ? AND u.created_at >= ?"
        f" AND {column} IS NOT NULL GROUP BY {column}", (wallet_id, utc_text(since)))
    return {row[0]: Spend(row[1], row[2], row[3]) for row in found}


def _entries(conn: sqlite3.Connection, query: EntryQuery) -> Page[Entry]:
    where, params = _entry_filter(query)
    total = conn.execute(f"SELECT COUNT(DISTINCT posting_id) FROM mw_transfers WHERE {where}", params).fetchone()[0]
    having = ""
    if query.cursor is not None:
        created_at, posting_id = rows.decode_cursor(query.cursor, 2)
        having = " HAVING (MIN(created_at), posting_id) < (:c_at, :c_id)"
        params = {**params, "c_at": created_at, "c_id": posting_id}
    found = conn.execute(
        f"SELECT {_ENTRY_COLUMNS} FROM mw_transfers WHERE {where} GROUP BY posting_id{having}"
        " ORDER BY MIN(created_at) DESC, posting_id DESC LIMIT :limit", {**params, "limit": query.limit + 1}).fetchall()
    page = found[:query.limit]
    usage = _usage_of(conn, [row["request_id"] for row in page if row["kind"] == "usage" and row["request_id"]])
    items = tuple(_entry(row, usage.get(row["request_id"])) for row in page)
    last = page[-1] if len(found) > query.limit else None
    return Page(items, total, rows.encode_cursor(last["created_at"], last["posting_id"]) if last else None)


def _entry_filter(query: EntryQuery) -> tuple[str, dict[str, Any]]:
    where = "(debit_account = :wallet OR credit_account = :wallet)"
    params: dict[str, Any] = {"wallet": query.wallet_id}
    if query.kinds:
        names = [f":kind{i}" for i in range(len(query.kinds))]
        where += f" AND kind IN ({', '.join(names)})"
        params.update({name[1:]: kind for name, kind in zip(names, query.kinds, strict=True)})
    if query.since is not None:
        where += " AND created_at >= :since"
        params["since"] = utc_text(query.since)
    if query.until is not None:
        where += " AND created_at < :until"
        params["until"] = utc_text(query.until)
    if query.key_ids is not None:
        names = [f":key{i}" for i in range(len(query.key_ids))] or ["NULL"]
        where += (" AND kind = 'usage' AND EXISTS (SELECT 1 FROM mw_usage u WHERE u.request_id = mw_transfers.request_id"
                  f" AND u.key_id IN ({', '.join(names)}))")
        params.update({name[1:]: key for name, key in zip(names, query.key_ids, strict=False)})
    return where, params


def _usage_of(conn: sqlite3.Connection, request_ids: list[str]) -> dict[str, UsageSummary]:
    if not request_ids:
        return {}
    found = conn.execute(
        "SELECT request_id, key_id, model, endpoint, status, prompt_tokens, cached_tokens, completion_tokens, cost_nusd"
        f" FROM mw_usage WHERE request_id IN ({', '.join('?' * len(request_ids))})", request_ids)
    return {row[0]: UsageSummary(*row[1:]) for row in found}


def _entry(row: sqlite3.Row, usage: UsageSummary | None) -> Entry:
    return Entry(row["posting_id"], row["kind"], row["amount_nusd"], row["counterparty"], row["created_at"],
                 row["posting_id"], row["request_id"], row["memo"], usage)
