"""The settler under database faults: it never wedges, never loses a debit, and says when it is not ready.

The Postgres outages here are real: a dedicated login role whose CONNECTION
LIMIT is set to 0 while its backends are terminated, so the gateway's pool
meets "too many connections for role" (SQLSTATE 53300) and dropped connections,
as in the episode that used to kill the settle loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from multidict import CIMultiDict

from gateway.http.app import create_app
from gateway.money.journal import Journal
from gateway.money.stores import Stores, open_stores
from ledger.book import SettleResult, UsageRecord
from ledger.errors import LedgerFailure, LedgerUnavailable
from ledger.money import parse_usd
from ledger.postgres_book import PostgresBook, classify
from ledger.sqlite_book import SqliteBook
from tests.conftest import PG_ADMIN_DSN, REDIS_TEST_URL, pg_schema, store_settings
from tests.gateway_harness import Harness, settings_for, start_gateway

FEE = parse_usd("0.01")  # the flat-fee model's price per call
FAST = {"settle_wait_max_s": 2, "settle_retry_max": 2, "settle_retry_delay_s": 0.05, "settle_retry_delay_max_s": 0.3,
        "key_cache_ttl_s": 600, "ready_check_timeout_s": 0.5, "settle_shutdown_timeout_s": 1}
CHAT = b'{"model": "flat-fee", "messages": [{"role": "user", "content": "x"}]}'


async def admin(sql: str) -> Any:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        return await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def limited_role() -> AsyncIterator[tuple[str, str, str]]:
    """(role, its DSN on a fresh schema, the admin DSN on that schema); all dropped afterwards."""
    role = f"mw_limited_{uuid.uuid4().hex[:10]}"
    async with pg_schema() as admin_dsn:
        schema = admin_dsn.rsplit("search_path=", 1)[1]
        await admin(f"CREATE ROLE {role} LOGIN")
        try:
            await admin(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}")
            parts = urlsplit(admin_dsn)
            role_dsn = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
            book = await PostgresBook.connect(role_dsn)  # migrated by the role: it owns its tables
            try:
                await book.migrate()
            finally:
                await book.close()
            yield role, role_dsn, admin_dsn
        finally:
            await admin(f"ALTER ROLE {role} CONNECTION LIMIT -1")
            await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            await admin(f"DROP OWNED BY {role} CASCADE")
            await admin(f"DROP ROLE {role}")


@contextlib.asynccontextmanager
async def outage(role: str) -> AsyncIterator[None]:
    """The role may not connect, and its connections keep being cut, until the block ends."""
    await admin(f"ALTER ROLE {role} CONNECTION LIMIT 0")

    async def cut() -> None:
        while True:
            await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            await asyncio.sleep(0.1)

    cutter = asyncio.create_task(cut())
    try:
        await asyncio.sleep(0.2)
        yield
    finally:
        cutter.cancel()
        await asyncio.gather(cutter, return_exceptions=True)
        await admin(f"ALTER ROLE {role} CONNECTION LIMIT -1")


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    prefix = f"mwt{uuid.uuid4().hex[:10]}"
    client = aioredis.from_url(REDIS_TEST_URL)
    # An established deployment (as in conftest.store_settings): no first-start grace.
    await client.hset(f"{prefix}:generation", mapping={"id": "test", "born_ms": 0})
    async with limited_role() as (role, role_dsn, admin_dsn):
        yield {"role": role, "admin_dsn": admin_dsn, "journal": tmp_path / "meterway-journal.jsonl",
               "store": {"database_url": role_dsn, "redis_url": REDIS_TEST_URL, "redis_prefix": prefix,
                         "settle_journal_path": str(tmp_path / "meterway-journal.jsonl")}}
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def call(gw: Harness, secret: str) -> tuple[int, CIMultiDict[str], float]:
    started = time.monotonic()
    status, headers, _ = await gw.raw_post("/v1/chat/completions", CHAT, secret)
    return status, CIMultiDict(headers), time.monotonic() - started


async def ready(gw: Harness) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.base_url}/readyz") as response:
            return response.status, await response.json()


async def wait_ready(gw: Harness, status: int, within_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        got, body = await ready(gw)
        if got == status or time.monotonic() > deadline:
            assert got == status, body
            return body
        await asyncio.sleep(0.1)


async def balance_of(admin_dsn: str, wallet: str) -> int:
    book = await PostgresBook.connect(admin_dsn)
    try:
        found = await book.wallet(wallet)
        assert found is not None
        return found.balance_nusd
    finally:
        await book.close()


async def test_a_too_many_connections_episode_neither_wedges_nor_loses_nor_doubles(limited, fake_upstream) -> None:
    gw = await start_gateway(settings_for(fake_upstream, limited["store"], limits=FAST))
    try:
        wallet, key = await gw.funded_key("1")
        status, headers, _ = await call(gw, key)  # warm: key cached, mirror loaded
        assert status == 200 and headers["X-Usage-Cost"] == "0.01"

        async with outage(limited["role"]):
            async with asyncio.timeout(20):  # today: the settle loop dies and these hang forever
                during = await asyncio.gather(*(call(gw, key) for _ in range(5)))
            for status, _, elapsed in during:
                assert status == 200
                assert elapsed < FAST["settle_wait_max_s"] + 2, elapsed
            assert all("X-Usage-Cost" not in headers for _, headers, _ in during), "no commit could happen"
            status, body = await ready(gw)
            assert status == 503 and body["checks"]["ledger"] != "ok", body
            assert body["settlement"]["retrying"] == 5, body
            await asyncio.sleep(1.5)

        await wait_ready(gw, 200, within_s=10)
        status, headers, _ = await call(gw, key)
        assert status == 200 and headers["X-Usage-Cost"] == "0.01"
        async with asyncio.timeout(10):
            await gw.settled_everything()
        # Every served request charged exactly once: the warm-up, the five, the last.
        assert await gw.balance(wallet) == parse_usd("1") - 7 * FEE
        for _, headers, _ in during:
            assert (await gw.usage(headers["X-Request-Id"], key))["charged_nusd"] == FEE
        gw.wallets.append(wallet)
        await gw.assert_no_holds()
        await gw.totals()
        assert gw.state.settler.restarts == 0
    finally:
        started = time.monotonic()
        await gw.runner.cleanup()
        assert time.monotonic() - started < 10, "shutdown must not hang"
    assert not list(limited["journal"].parent.glob("meterway-journal*.jsonl")), "nothing left to journal"


async def test_shutdown_during_an_outage_journals_and_the_next_start_and_the_command_commit_once(
        limited, fake_upstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(fake_upstream, limited["store"], limits=FAST)
    first = await start_gateway(settings)
    wallet, key = await first.funded_key("1")
    assert (await call(first, key))[1]["X-Usage-Cost"] == "0.01"
    async with outage(limited["role"]):
        during = await asyncio.gather(*(call(first, key) for _ in range(4)))
        assert [status for status, _, _ in during] == [200] * 4
        started = time.monotonic()
        await first.runner.cleanup()  # today: the retries are cancelled and the debits lost
        assert time.monotonic() - started < FAST["settle_shutdown_timeout_s"] + 5
    ids = {headers["X-Request-Id"] for _, headers, _ in during}
    [journal_file] = Journal(limited["journal"]).files()
    assert journal_file.name == f"meterway-journal.{os.getpid()}.jsonl"
    journaled = [UsageRecord(**__import__("json").loads(line)) for line in journal_file.read_text().splitlines()]
    assert {r.request_id for r in journaled} == ids
    saved = journal_file.read_bytes()
    assert await balance_of(limited["admin_dsn"], wallet) == parse_usd("1") - FEE, "nothing committed in the outage"

    with caplog.at_level(logging.INFO, logger="meterway.settlement"):
        second = await start_gateway(settings)  # replays the journal before serving
    try:
        assert "settle journal replayed at start: 4 settled" in caplog.text
        assert await second.balance(wallet) == parse_usd("1") - 5 * FEE
        assert not journal_file.exists(), "a replayed journal is removed"
        second.wallets.append(wallet)
        await second.assert_no_holds()  # the journaled requests' holds were settled by the replay

        # The same journal again, through the command: nothing more is charged.
        journal_file.write_bytes(saved)
        config = tmp_path / "meterway.toml"
        config.write_text(
            f'database_url = "{limited["admin_dsn"]}"\nredis_url = "{REDIS_TEST_URL}"\n'
            f'redis_prefix = "{limited["store"]["redis_prefix"]}"\nsettle_journal_path = "{limited["journal"]}"\n')
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("MW_")}
        command = [sys.executable, "-m", "gateway.cli", "journal", "replay", "--config", str(config)]
        replayed = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
        assert replayed.returncode == 0, replayed.stderr
        assert "0 settled, 4 already settled" in replayed.stdout, replayed.stdout
        assert not journal_file.exists()
        assert await second.balance(wallet) == parse_usd("1") - 5 * FEE
        await second.totals()
    finally:
        await second.runner.cleanup()


class FaultyBook:
    """A real book whose settle_batch raises the next planted exception once."""

    def __init__(self, book: Any) -> None:
        self._book = book
        self.planted: list[BaseException] = []
        self.down = False  # every settle_batch raises LedgerUnavailable, as in an outage
        self.slow_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._book, name)

    async def settle_batch(self, items: Sequence[UsageRecord]) -> list[SettleResult]:
        if self.slow_s:
            await asyncio.sleep(self.slow_s)  # a ledger that answers, slowly
        if self.down:
            raise LedgerUnavailable("the ledger is down (injected)")
        if self.planted:
            raise self.planted.pop(0)
        return await self._book.settle_batch(items)


@contextlib.asynccontextmanager
async def faulty_gateway(backend: str, fake_upstream: str, tmp_path: Path,
                         **limits: Any) -> AsyncIterator[tuple[Harness, FaultyBook]]:
    async with store_settings(backend, tmp_path) as store:
        settings = settings_for(fake_upstream, {**store, "settle_journal_path": str(tmp_path / "j.jsonl")},
                                limits={**FAST, **limits})
        stores = await open_stores(settings)
        book = FaultyBook(stores.book)
        app = create_app(settings, Stores(book, stores.holds))  # type: ignore[arg-type]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        gw = Harness(f"http://127.0.0.1:{runner.addresses[0][1]}", app, runner)
        try:
            yield gw, book
            await gw.assert_no_holds()
            await gw.totals()
        finally:
            await runner.cleanup()
            await stores.close()


async def test_the_settler_survives_an_unexpected_error_and_keeps_the_record(backend, fake_upstream, tmp_path) -> None:
    async with faulty_gateway(backend, fake_upstream, tmp_path) as (gw, book):
        wallet, key = await gw.funded_key("1")
        book.planted.append(RuntimeError("a bug in the book"))
        async with asyncio.timeout(10):  # today: the loop dies, this request hangs
            status, failed, _ = await call(gw, key)
        assert status == 200 and "X-Usage-Cost" not in failed, "a batch that failed shows no cost"
        status, headers, _ = await call(gw, key)
        assert status == 200 and headers["X-Usage-Cost"] == "0.01", "the next request settles normally"
        assert await gw.balance(wallet) == parse_usd("1") - FEE
        # Not dropped: the failed record waits in the journal, and a replay charges it once.
        report = await gw.state.settler.replay_journal()
        assert (report.settled, report.already, report.kept) == (1, 0, 0)
        assert await gw.balance(wallet) == parse_usd("1") - 2 * FEE
        assert (await gw.usage(failed["X-Request-Id"], key))["charged_nusd"] == FEE


@pytest.mark.parametrize("backend", ["production"])
async def test_a_permanent_postgres_error_fails_the_batch_and_the_next_settles(backend, fake_upstream, tmp_path) -> None:
    async with faulty_gateway(backend, fake_upstream, tmp_path) as (gw, book):
        wallet, key = await gw.funded_key("1")
        book.planted.append(classify(asyncpg.exceptions.UndefinedFunctionError("function mw_settle_batch does not exist"), "Postgres"))
        book.planted.append(classify(asyncpg.exceptions.ObjectNotInPrerequisiteStateError("lock not available"), "Postgres"))
        async with asyncio.timeout(10):
            status, failed, _ = await call(gw, key)  # LedgerFailure: given up at once
            assert status == 200 and "X-Usage-Cost" not in failed
            status, retried, _ = await call(gw, key)  # LedgerUnavailable: retried, then committed
        assert status == 200 and retried["X-Usage-Cost"] == "0.01"
        assert await gw.balance(wallet) == parse_usd("1") - FEE


async def test_a_full_retry_queue_refuses_new_work_and_loses_none(backend, fake_upstream, tmp_path) -> None:
    async with faulty_gateway(backend, fake_upstream, tmp_path, settle_retry_queue_max=2) as (gw, book):
        wallet, key = await gw.funded_key("1")
        book.down = True
        for _ in range(2):
            status, headers, _ = await call(gw, key)
            assert status == 200 and "X-Usage-Cost" not in headers
        status, _, _ = await call(gw, key)
        assert status == 503, "no upstream work whose charge could not be kept"
        assert (await ready(gw))[0] == 503
        book.down = False
        async with asyncio.timeout(10):
            await gw.settled_everything()
        assert await gw.balance(wallet) == parse_usd("1") - 2 * FEE, "both waiting settlements committed, once"
        await wait_ready(gw, 200, within_s=5)


async def test_a_dead_settle_loop_is_restarted(gw) -> None:
    wallet, key = await gw.funded_key("1")
    settler = gw.state.settler
    assert settler._task is not None
    settler._task.cancel()  # as if a bug ended it
    await asyncio.sleep(0.3)
    assert settler.restarts == 1 and (await ready(gw))[0] == 200
    async with asyncio.timeout(10):
        status, headers, _ = await call(gw, key)
    assert status == 200 and headers["X-Usage-Cost"] == "0.01"
    assert await gw.balance(wallet) == parse_usd("1") - FEE


async def test_readyz_is_ready_when_the_stores_answer(gw) -> None:
    status, body = await ready(gw)
    assert status == 200 and body["status"] == "ready", body
    assert body["checks"] == {"ledger": "ok", "holds": "ok", "settlement": "ok"}


@pytest.mark.parametrize("backend", ["production"])
async def test_readyz_is_503_while_redis_is_unreachable(gateway_factory) -> None:
    broken = await gateway_factory(redis_url="redis://127.0.0.1:9/0")
    status, body = await ready(broken)
    assert status == 503 and body["status"] == "unavailable", body
    assert body["checks"]["holds"] != "ok" and body["checks"]["ledger"] == "ok", body
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{broken.base_url}/healthz") as response:
            assert response.status == 200, "liveness is not readiness"


async def test_database_errors_are_classified_transient_or_permanent(tmp_path: Path) -> None:
    exc = asyncpg.exceptions
    transient = [exc.TooManyConnectionsError("too many connections for role"), exc.CannotConnectNowError("starting up"),
                 exc.AdminShutdownError("terminating connection"), exc.QueryCanceledError("canceling statement"),
                 exc.DeadlockDetectedError("deadlock"), exc.SerializationError("could not serialize"),
                 exc.ObjectNotInPrerequisiteStateError("lock not available"), exc.ConnectionDoesNotExistError("closed"),
                 asyncpg.InterfaceError("pool is closed"), ConnectionRefusedError(111, "refused"), TimeoutError()]
    permanent = [exc.UndefinedTableError("relation does not exist"), exc.UniqueViolationError("duplicate"),
                 exc.NumericValueOutOfRangeError("out of range"), exc.InsufficientPrivilegeError("permission denied")]
    assert all(isinstance(classify(e, "Postgres"), LedgerUnavailable) for e in transient)
    assert all(isinstance(classify(e, "Postgres"), LedgerFailure) for e in permanent)

    # Real errors from real databases, not migrated: permanent, not "retry later".
    async with pg_schema() as dsn:
        book = await PostgresBook.connect(dsn)
        try:
            with pytest.raises(LedgerFailure):
                await book.wallet("nobody")
            await book.ping()
        finally:
            await book.close()
    sqlite = SqliteBook(str(tmp_path / "unmigrated.sqlite3"))
    try:
        with pytest.raises(LedgerFailure):
            await sqlite.wallet("nobody")
    finally:
        await sqlite.close()
    with pytest.raises(LedgerUnavailable):  # nothing listens there
        await PostgresBook.connect("postgresql://postgres@127.0.0.1:9/test")


async def test_an_uncached_key_during_an_outage_is_a_503_not_a_500(limited, fake_upstream) -> None:
    gw = await start_gateway(settings_for(fake_upstream, limited["store"], limits=FAST))
    try:
        wallet, key = await gw.funded_key("1")
        gw.wallets.append(wallet)
        async with outage(limited["role"]):
            status, headers, body = await gw.raw_post("/v1/chat/completions", CHAT, key)
        assert status == 503, body
        assert body["error"]["code"] == "ledger_unavailable" and headers["Content-Type"].startswith("application/json")
        status, headers, _ = await call(gw, key)  # the same key once the ledger is back
        assert status == 200 and headers["X-Usage-Cost"] == "0.01"
        await gw.assert_no_holds()
        await gw.totals()
    finally:
        await gw.runner.cleanup()


async def test_a_slow_ledger_answers_the_client_by_the_wait_deadline_and_still_commits(backend, fake_upstream, tmp_path) -> None:
    async with faulty_gateway(backend, fake_upstream, tmp_path, settle_wait_max_s=0.4) as (gw, book):
        wallet, key = await gw.funded_key("1")
        book.slow_s = 2.0
        status, headers, elapsed = await call(gw, key)
        # Answered by the deadline (checked 4 times per period: at most 1.25 x 0.4 s, plus the upstream),
        # without a cost, because the debit is not committed yet.
        assert status == 200 and "X-Usage-Cost" not in headers
        assert elapsed < 1.5, elapsed
        book.slow_s = 0.0
        async with asyncio.timeout(10):
            await gw.settled_everything()
        assert await gw.balance(wallet) == parse_usd("1") - FEE  # the settlement went on: charged once
        assert (await gw.usage(headers["X-Request-Id"], key))["charged_nusd"] == FEE
