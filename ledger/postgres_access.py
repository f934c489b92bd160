"""What every Postgres mixin of the book (owners, history, lots, payments) reaches the database through.

PostgresBook provides _with (a pooled connection, driver errors translated);
_atomic wraps a function in one transaction on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

T = TypeVar("T")


class PostgresAccess:
    async def _with(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        raise NotImplementedError

    async def _atomic(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def run(conn: asyncpg.Connection) -> T:
            async with conn.transaction():
                return await fn(conn)

        return await self._with(run)
