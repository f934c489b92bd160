"""The price catalogue on SQLite (the contract is ledger/prices.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from ledger.prices import PriceConflict, PriceVersion
from ledger.sqlite_access import SqliteAccess
from ledger.times import parse_utc, utc_text


def _version(row: Any) -> PriceVersion:
    return PriceVersion(row["model"], utc_text(parse_utc(row["effective_at"])), row["input_per_1m_nusd"],
                        row["cached_input_per_1m_nusd"], row["output_per_1m_nusd"], row["per_call_nusd"],
                        row["created_at"])


class SqlitePrices(SqliteAccess):
    async def price_versions(self) -> list[PriceVersion]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_prices ORDER BY model, effective_at").fetchall())
        return [_version(r) for r in found]

    async def add_price_versions(self, versions: Sequence[PriceVersion]) -> int:
        def add(conn: sqlite3.Connection) -> int:
            added = 0
            for v in versions:
                found = conn.execute("SELECT * FROM mw_prices WHERE model = ? AND effective_at = ?",
                                     (v.model, v.effective_at)).fetchone()
                if found is not None:
                    if not _version(found).same_prices(v):
                        raise PriceConflict(f"{v.version} exists with other prices: a version is never changed")
                    continue
                conn.execute(
                    "INSERT INTO mw_prices (model, effective_at, input_per_1m_nusd, cached_input_per_1m_nusd,"
                    " output_per_1m_nusd, per_call_nusd) VALUES (?, ?, ?, ?, ?, ?)",
                    (v.model, v.effective_at, v.input_per_1m_nusd, v.cached_input_per_1m_nusd, v.output_per_1m_nusd,
                     v.per_call_nusd))
                added += 1
            return added

        return await self._atomic(add)
