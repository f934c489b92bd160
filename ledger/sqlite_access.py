"""What every SQLite mixin of the book (owners, history, lots, payments) reaches the database through.

SqliteBook provides _run (one call on the ledger's thread); _atomic runs a
function in one BEGIN IMMEDIATE transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from ledger import sqlite_postings as postings

T = TypeVar("T")


class SqliteAccess:
    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError

    async def _atomic(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda conn: postings.atomic(conn, fn))
