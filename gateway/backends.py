"""Choosing the stores: SQLite + in-process holds (embedded) or Postgres + Redis.

Each third-party client is created here and handed to the ledger, which never
imports aiohttp, and only redis_holds imports redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from ledger.book import Book
from ledger.holds import HoldStore, InProcessHolds


@dataclass(frozen=True)
class Stores:
    book: Book
    holds: HoldStore

    async def close(self) -> None:
        await self.holds.close()
        await self.book.close()


async def open_book(settings: Settings) -> Book:
    if settings.database_url:
        from ledger.postgres_book import PostgresBook

        return await PostgresBook.connect(settings.database_url, pool_max=settings.limits.db_pool_max)
    from ledger.sqlite_book import SqliteBook

    return SqliteBook(settings.sqlite_path)


async def open_holds(settings: Settings) -> HoldStore:
    if settings.redis_url:
        import redis.asyncio as aioredis

        from ledger.redis_holds import RedisHolds

        limits = settings.limits
        # No per-command socket timeout: RedisHolds puts one deadline on each
        # pipeline, which costs far less than one per command.
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=limits.redis_timeout_s)
        return RedisHolds(client, prefix=settings.redis_prefix, close_client=True,
                          pipeline_max=limits.redis_pipeline_max, timeout_s=limits.redis_timeout_s)
    return InProcessHolds()


async def open_stores(settings: Settings) -> Stores:
    book = await open_book(settings)
    await book.migrate()
    return Stores(book, await open_holds(settings))
