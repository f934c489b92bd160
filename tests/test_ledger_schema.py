"""The two schemas are one design, and migration 0002 keeps the money a 0001 book held.

The schemas are read back from the databases themselves (sqlite_master and
pragmas; information_schema and pg_catalog) and compared after normalising
dialect spellings: tables, columns (type class, nullability), primary keys,
unique constraints, foreign keys and checks (by meaning).
"""

from __future__ import annotations

import dataclasses
import re
import sqlite3

import asyncpg
import pytest

from ledger.book import FUNDING_ACCOUNT, REVENUE_ACCOUNT, SHORTFALL_ACCOUNT, SettleOutcome, check_invariants, migration_files
from ledger.errors import LedgerFailure
from ledger.postgres_book import PostgresBook
from ledger.sqlite_book import SqliteBook, _split_sql
from tests.conftest import pg_schema
from tests.test_ledger_contract import usage

TYPE_CLASS = {
    "integer": "integer", "bigint": "integer", "boolean": "integer",
    "text": "text", "timestamp with time zone": "text", "jsonb": "text",
    "real": "real", "double precision": "real",
}
# STRICT SQLite has no boolean: a 0/1 CHECK stands where Postgres has the type.
BOOLEAN_DOMAIN = re.compile(r"^[a-z_]+in0,1$")


def _check_meaning(text: str) -> str:
    text = re.sub(r"::[a-z ]+", "", text.lower())
    text = re.sub(r"^check", "", re.sub(r"[\s()]", "", text))
    # Postgres shows `x IN ('a', 'b')` as `x = ANY (ARRAY['a', 'b'])`: the same meaning.
    text = re.sub(r"=anyarray\[([^\]]*)\]", r"in\1", text)
    return text.replace("'", "")


def _sqlite_checks(create_sql: str) -> set[str]:
    checks = set()
    for match in re.finditer(r"CHECK\s*\(", create_sql):
        depth, start = 0, match.end() - 1
        for end in range(start, len(create_sql)):
            depth += {"(": 1, ")": -1}.get(create_sql[end], 0)
            if depth == 0:
                break
        meaning = _check_meaning(create_sql[start:end + 1])
        if not BOOLEAN_DOMAIN.match(meaning):
            checks.add(meaning)
    return checks


def sqlite_schema(path: str) -> dict[str, dict[str, object]]:
    conn = sqlite3.connect(path)
    try:
        schema = {}
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name LIKE 'mw_%'"):
            info = conn.execute(f"PRAGMA table_info({name})").fetchall()
            columns = {c[1]: (TYPE_CLASS[c[2].lower()], bool(c[3] or c[5])) for c in info}
            primary = tuple(c[1] for c in sorted(info, key=lambda c: c[5]) if c[5])
            fks: dict[int, list[tuple[str, str, str]]] = {}
            for fk in conn.execute(f"PRAGMA foreign_key_list({name})"):
                fks.setdefault(fk[0], []).append((fk[2], fk[3], fk[4]))
            foreign = {(tuple(f for _, f, _ in legs), legs[0][0], tuple(t for _, _, t in legs)) for legs in fks.values()}
            unique = {
                tuple(col[2] for col in conn.execute(f"PRAGMA index_info({index[1]})"))
                for index in conn.execute(f"PRAGMA index_list({name})") if index[3] == "u"
            }
            schema[name] = {"columns": columns, "primary": primary, "foreign": foreign, "unique": unique,
                            "checks": _sqlite_checks(sql)}
        return schema
    finally:
        conn.close()


async def postgres_schema(dsn: str) -> dict[str, dict[str, object]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = [r[0] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_type = 'BASE TABLE' AND table_name LIKE 'mw\\_%'")]
        schema = {}
        for name in tables:
            cols = await conn.fetch(
                "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = $1", name)
            cons = await conn.fetch(
                "SELECT c.contype::text AS contype, pg_get_constraintdef(c.oid) AS def, c.confrelid::regclass::text AS ref,"
                " ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(n, o)"
                "       JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.o) AS cols,"
                " ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(n, o)"
                "       JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.o) AS refcols"
                " FROM pg_constraint c WHERE c.conrelid = $1::regclass", name)
            schema[name] = {
                "columns": {c["column_name"]: (TYPE_CLASS[c["data_type"]], c["is_nullable"] == "NO") for c in cols},
                "primary": next(tuple(c["cols"]) for c in cons if c["contype"] == "p"),
                "foreign": {(tuple(c["cols"]), c["ref"], tuple(c["refcols"])) for c in cons if c["contype"] == "f"},
                "unique": {tuple(c["cols"]) for c in cons if c["contype"] == "u"},
                "checks": {_check_meaning(c["def"]) for c in cons if c["contype"] == "c"},
            }
        return schema
    finally:
        await conn.close()


async def test_sqlite_and_postgres_schemas_match(tmp_path, pg_dsn: str) -> None:
    lite = SqliteBook(str(tmp_path / "s.sqlite3"))
    await lite.migrate()
    await lite.close()
    pg = await PostgresBook.connect(pg_dsn)
    await pg.migrate()
    await pg.close()
    left, right = sqlite_schema(str(tmp_path / "s.sqlite3")), await postgres_schema(pg_dsn)
    assert sorted(left) == sorted(right)
    for table in left:
        for part in ("columns", "primary", "foreign", "unique", "checks"):
            assert left[table][part] == right[table][part], (table, part, left[table][part], right[table][part])
    assert ("kind", "allow_negative") in {f[0] for f in left["mw_accounts"]["foreign"]}  # kinds are data


# A 0001 book with money in it: a deposit, a charged request, one with a shortfall.
SEED_SQL = [
    "INSERT INTO mw_accounts (id, kind, name) VALUES ('w', 'wallet', 'W')",
    "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind) VALUES ('d1', 'sys:funding', 'w', 500, 'deposit')",
    "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id) VALUES ('r1', 'w', 'sys:revenue', 300, 'usage', 'r1')",
    "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id) VALUES ('r2', 'w', 'sys:revenue', 200, 'usage', 'r2')",
    "INSERT INTO mw_transfers (id, debit_account, credit_account, amount_nusd, kind, request_id) VALUES ('r2:shortfall', 'sys:shortfall', 'sys:revenue', 50, 'shortfall', 'r2')",
]
USAGE_ROW = (
    "INSERT INTO mw_usage (request_id, key_id, wallet_id, bot, model, upstream, endpoint, status, usage_source,"
    " prompt_tokens, cached_tokens, completion_tokens, input_per_1m_nusd, cached_input_per_1m_nusd, output_per_1m_nusd,"
    " per_call_nusd, cost_nusd, charged_nusd, shortfall_nusd, held_nusd, latency_ms, upstream_latency_ms) VALUES"
    " ('{rid}', 'k1', 'w', NULL, 'm', 'u', 'chat', 'ok', 'upstream', 10, 0, 5, 1, 1, 1, 0, {cost}, {charged}, {short}, 0, 1.0, 0.5)"
)
SEED_SQL += [USAGE_ROW.format(rid="r1", cost=300, charged=300, short=0),
             USAGE_ROW.format(rid="r2", cost=250, charged=200, short=50)]


async def _migrate_and_check(book) -> None:
    """Migrate a 0001 book holding money to the latest, then check that nothing of it changed."""
    later = [version for version, _ in migration_files("sqlite")][1:]  # every migration after 0001, as files list them
    assert later[:2] == [2, 3] and [v for v, _ in migration_files("postgres")][1:] == later
    assert await book.pending_migrations() == later
    assert await book.migrate() == later
    wallet = await book.wallet("w")
    assert wallet is not None and (wallet.balance_nusd, wallet.version) == (0, 3)
    totals = await book.totals()
    check_invariants(totals)
    assert (totals.revenue_nusd, totals.shortfall_nusd, totals.funding_nusd) == (550, -50, -500)
    settled = await book.usage("r2")
    # payees: all to sys:revenue; the provider cost of a plain call is its cost (migration 0009)
    assert settled is not None and settled.record == dataclasses.replace(usage("r2", "w", 250), provider_cost_nusd=250)
    # The settle journal replays onto the migrated rows idempotently (same transfer ids).
    again = await book.settle_batch([usage("r1", "w", 300), usage("r2", "w", 250)])
    assert [r.outcome for r in again] == [SettleOutcome.REPLAY, SettleOutcome.REPLAY]
    assert [(r.charged_nusd, r.shortfall_nusd) for r in again] == [(300, 0), (200, 50)]
    history = await book.transfers_of(SHORTFALL_ACCOUNT)
    assert [(t.transfer.transfer_id, t.posting_id) for t in history] == [("r2:shortfall", "r2")]
    assert {t.transfer.transfer_id for t in await book.transfers_of(REVENUE_ACCOUNT)} == {"r1", "r2", "r2:shortfall"}
    assert [t.posting_id for t in await book.transfers_of(FUNDING_ACCOUNT)] == ["d1"]


async def test_sqlite_0001_book_with_money_migrates_to_0002_intact(tmp_path) -> None:
    path = str(tmp_path / "old.sqlite3")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("CREATE TABLE mw_schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
    for statement in _split_sql(migration_files("sqlite")[0][1]) + SEED_SQL:
        conn.execute(statement)
    conn.execute("INSERT INTO mw_schema_migrations VALUES (1, 'then')")
    conn.close()
    book = SqliteBook(path)
    try:
        await _migrate_and_check(book)
    finally:
        await book.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    # The rebuild left the same schema a fresh book has: tables, indexes, triggers.
    fresh = SqliteBook(str(tmp_path / "fresh.sqlite3"))
    await fresh.migrate()
    await fresh.close()
    assert sqlite_schema(path) == sqlite_schema(str(tmp_path / "fresh.sqlite3"))
    objects = "SELECT type, name, tbl_name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY 1, 2"
    migrated, created = sqlite3.connect(path), sqlite3.connect(str(tmp_path / "fresh.sqlite3"))
    assert migrated.execute(objects).fetchall() == created.execute(objects).fetchall()
    migrated.close()
    created.close()


async def test_postgres_0001_book_with_money_migrates_to_0002_intact() -> None:
    async with pg_schema() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE mw_schema_migrations (version integer PRIMARY KEY,"
                               " applied_at timestamptz NOT NULL DEFAULT now())")
            await conn.execute(migration_files("postgres")[0][1])
            for statement in SEED_SQL:
                await conn.execute(statement)
            await conn.execute("INSERT INTO mw_schema_migrations (version) VALUES (1)")
        finally:
            await conn.close()
        book = await PostgresBook.connect(dsn)
        try:
            await _migrate_and_check(book)
        finally:
            await book.close()
        async with pg_schema() as fresh_dsn:
            fresh = await PostgresBook.connect(fresh_dsn)
            await fresh.migrate()
            await fresh.close()
            assert await postgres_schema(dsn) == await postgres_schema(fresh_dsn)


async def test_a_new_kind_is_one_row_and_an_unknown_kind_is_refused(book) -> None:
    """The database, not a CHECK list, is the authority on kinds."""
    raw = _raw(book)
    await book.create_wallet("w")
    with pytest.raises(LedgerFailure):
        await raw("INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind)"
                  " VALUES ('x', 'x', 'sys:funding', 'w', 5, 'bonus')")
    with pytest.raises(LedgerFailure):
        await raw("INSERT INTO mw_accounts (id, kind) VALUES ('sys:fees', 'fees')")
    with pytest.raises(LedgerFailure):  # a kind's may_go_negative is the account's allow_negative
        await raw("INSERT INTO mw_accounts (id, kind, allow_negative) VALUES ('w2', 'wallet', true)")
    await raw("INSERT INTO mw_transfer_kinds (kind, description) VALUES ('bonus', 'a promotional credit')")
    await raw("INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind)"
              " VALUES ('x', 'x', 'sys:funding', 'w', 5, 'bonus')")
    assert (await book.wallet("w")).balance_nusd == 5
    check_invariants(await book.totals())


def _raw(book):
    """One SQL statement on the book's own connection, errors translated as the book does."""
    if isinstance(book, SqliteBook):
        async def run_sqlite(sql: str) -> None:
            await book._run(lambda conn: conn.execute(sql.replace("true", "1")))
        return run_sqlite

    async def run_postgres(sql: str) -> None:
        await book._with(lambda conn: conn.execute(sql))
    return run_postgres


async def test_every_kind_python_names_is_a_row_the_database_knows(book) -> None:
    from ledger.book import RECEIVABLE_KIND, WALLET_KIND, TransferKind

    if isinstance(book, SqliteBook):
        transfer_kinds = await book._run(lambda c: {r[0] for r in c.execute("SELECT kind FROM mw_transfer_kinds")})
        account_kinds = await book._run(lambda c: {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT kind, may_go_negative, is_wallet FROM mw_account_kinds")})
    else:
        transfer_kinds = {r[0] for r in await book._with(lambda c: c.fetch("SELECT kind FROM mw_transfer_kinds"))}
        account_kinds = {r[0]: (r[1], r[2]) for r in await book._with(lambda c: c.fetch(
            "SELECT kind, may_go_negative, is_wallet FROM mw_account_kinds"))}
    assert {kind.value for kind in TransferKind} <= transfer_kinds
    assert account_kinds[WALLET_KIND] == (False, True) and account_kinds[RECEIVABLE_KIND] == (True, False)
    assert {k for k, (_, wallet) in account_kinds.items() if wallet} == {WALLET_KIND}
