"""The price catalogue on Postgres (the contract is ledger/prices.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger.postgres_access import PostgresAccess
from ledger.prices import PriceConflict, PriceVersion
from ledger.times import parse_utc, utc_text


def _version(row: Any) -> PriceVersion:
    return PriceVersion(row["model"], utc_text(row["effective_at"]), row["input_per_1m_nusd"],
                        row["cached_input_per_1m_nusd"], row["output_per_1m_nusd"], row["per_call_nusd"],
                        utc_text(row["created_at"]))


class PostgresPrices(PostgresAccess):
    async def price_versions(self) -> list[PriceVersion]:
        found = await self._with(lambda conn: conn.fetch("SELECT * FROM mw_prices ORDER BY model, effective_at"))
        return [_version(r) for r in found]

    async def add_price_versions(self, versions: Sequence[PriceVersion]) -> int:
        async def add(conn: asyncpg.Connection) -> int:
            added = 0
            for v in versions:
                found = await conn.fetchrow("SELECT * FROM mw_prices WHERE model = $1 AND effective_at = $2",
                                            v.model, parse_utc(v.effective_at))
                if found is not None:
                    if not _version(found).same_prices(v):
                        raise PriceConflict(f"{v.version} exists with other prices: a version is never changed")
                    continue
                await conn.execute(
                    "INSERT INTO mw_prices (model, effective_at, input_per_1m_nusd, cached_input_per_1m_nusd,"
                    " output_per_1m_nusd, per_call_nusd) VALUES ($1, $2, $3, $4, $5, $6)",
                    v.model, parse_utc(v.effective_at), v.input_per_1m_nusd, v.cached_input_per_1m_nusd,
                    v.output_per_1m_nusd, v.per_call_nusd)
                added += 1
            return added

        return await self._atomic(add)
