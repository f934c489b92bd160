"""Fixtures shared by the suite: real Postgres and Redis, each test isolated.

Postgres isolation is a fresh schema per test (selected through the DSN's
search_path); Redis isolation is a random key prefix. Where a service is
missing the test skips, except under CI=true, where a skip would hide a
broken machine and so fails instead.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as aioredis

from ledger.book import Book
from ledger.postgres_book import PostgresBook
from ledger.sqlite_book import SqliteBook
from tests.stripe_harness import fake_stripe  # noqa: F401 (the fixture)

PG_ADMIN_DSN = os.environ.get("MW_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("MW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing_service(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing service is a failure, not a skip)")
    pytest.skip(reason)


async def _pg_admin(sql: str) -> None:
    # A fresh connection each time: fault tests terminate long-lived ones.
    try:
        conn = await asyncpg.connect(PG_ADMIN_DSN)
    except (OSError, asyncpg.PostgresError) as exc:
        missing_service(f"Postgres not reachable at {PG_ADMIN_DSN}: {exc}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A DSN whose search_path is a fresh schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in PG_ADMIN_DSN else "?"
        yield f"{PG_ADMIN_DSN}{sep}search_path={schema}"
    finally:
        await _pg_admin(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with pg_schema() as dsn:
        yield dsn


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    client = aioredis.from_url(REDIS_TEST_URL)
    try:
        await client.ping()
    except (OSError, aioredis.ConnectionError) as exc:
        missing_service(f"Redis not reachable at {REDIS_TEST_URL}: {exc}")
    finally:
        await client.aclose()
    yield REDIS_TEST_URL


@pytest.fixture
def redis_prefix() -> str:
    return f"mwt{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "postgres"])
async def book(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Book]:
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            the_book: Book = SqliteBook(str(tmp_path / "ledger.sqlite3"))
        else:
            dsn = await stack.enter_async_context(pg_schema())
            the_book = await PostgresBook.connect(dsn)
        stack.push_async_callback(the_book.close)
        await the_book.migrate()
        yield the_book


@pytest.fixture
async def fake_upstream() -> AsyncIterator[str]:
    from fakes.openai import FakeConfig, start_fake_upstream
    from tests.gateway_harness import MODELS

    runner, base_url = await start_fake_upstream(FakeConfig(models=tuple(MODELS)))
    yield base_url
    await runner.cleanup()


@contextlib.asynccontextmanager
async def store_settings(backend: str, tmp_path) -> AsyncIterator[dict]:
    """Settings fields selecting a backend, with its storage isolated for one test."""
    if backend == "embedded":
        yield {"sqlite_path": str(tmp_path / "gateway.sqlite3")}
        return
    async with pg_schema() as dsn:
        client = aioredis.from_url(REDIS_TEST_URL)
        try:
            await client.ping()
        except (OSError, aioredis.ConnectionError) as exc:
            missing_service(f"Redis not reachable at {REDIS_TEST_URL}: {exc}")
        # A gateway refuses a Postgres schema that is behind (migrating is the
        # operator's explicit step, `meterway migrate`): take that step here.
        migrator = await PostgresBook.connect(dsn)
        await migrator.migrate()
        await migrator.close()
        prefix = f"mwt{uuid.uuid4().hex[:10]}"
        # An established deployment: a generation born long ago, so the gateways
        # do not wait out the grace a brand-new Redis pays once (ledger/redis_recovery.py).
        await client.hset(f"{prefix}:generation", mapping={"id": "test", "born_ms": 0})
        try:
            yield {"database_url": dsn, "redis_url": REDIS_TEST_URL, "redis_prefix": prefix,
                   "settle_journal_path": str(tmp_path / "meterway-journal.jsonl")}  # not in the working directory
        finally:
            async for key in client.scan_iter(match=f"{prefix}:*"):
                await client.delete(key)
            await client.aclose()


@pytest.fixture(params=["embedded", "production"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def gateway_factory(backend: str, fake_upstream: str, tmp_path):
    """Start gateways (default settings or overrides) on one backend; each is checked and stopped at the end."""
    from tests.gateway_harness import settings_for, start_gateway

    started = []
    async with store_settings(backend, tmp_path) as store:
        async def start(upstream_url: str | None = None, **overrides):
            harness = await start_gateway(settings_for(upstream_url or fake_upstream, store, **overrides))
            started.append(harness)
            return harness

        yield start
        for harness in started:
            # Holds never leak and the ledger balances, after every test.
            await harness.assert_no_holds()
            await harness.totals()
            await harness.runner.cleanup()


@pytest.fixture
async def gw(gateway_factory):
    return await gateway_factory()
