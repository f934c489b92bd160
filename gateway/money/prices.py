"""Which price a request pays: the catalogue's version in force when it started, else the config's.

The catalogue (ledger/prices.py) is read into memory at start and again
every `pricing.refresh_s`, so the request path reads no database: a model
with no catalogue version pays its [models] price at one dict lookup; one
with versions pays a bisect over their effective times. A version imported
ahead of its effective time (by more than the refresh interval) is in force
on every process at that instant.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from dataclasses import dataclass
from datetime import datetime

from config.pricing import ModelPrice
from ledger.errors import LedgerError
from ledger.prices import CONFIG_VERSION, PriceVersion
from ledger.store import LedgerStore

log = logging.getLogger("meterway.prices")


@dataclass(frozen=True)
class Priced:
    price: ModelPrice
    version: str  # "<model>@<effective_at>", or "config"


def model_price(version: PriceVersion) -> ModelPrice:
    return ModelPrice(version.input_per_1m_nusd, version.cached_input_per_1m_nusd, version.output_per_1m_nusd,
                      version.per_call_nusd)


class PriceBook:
    def __init__(self, configured: dict[str, ModelPrice]) -> None:
        self._configured = {model: Priced(price, CONFIG_VERSION) for model, price in configured.items()}
        self._versions: dict[str, tuple[list[float], list[Priced]]] = {}

    def load(self, versions: list[PriceVersion]) -> None:
        """Replace what is known with the catalogue as read (ordered by model, then effective time)."""
        table: dict[str, tuple[list[float], list[Priced]]] = {}
        for v in sorted(versions, key=lambda v: (v.model, v.effective_at)):
            starts, priced = table.setdefault(v.model, ([], []))
            starts.append(datetime.fromisoformat(v.effective_at).timestamp())
            priced.append(Priced(model_price(v), v.version))
        self._versions = table

    def at(self, model: str, when: float) -> Priced:
        """The price in force at `when` (epoch seconds): the latest version that started by then."""
        found = self._versions.get(model)
        if found is not None:
            starts, priced = found
            index = bisect.bisect_right(starts, when) - 1
            if index >= 0:
                return priced[index]
        return self._configured[model]

    async def refresh(self, book: LedgerStore) -> None:
        self.load(await book.price_versions())

    async def refresh_forever(self, book: LedgerStore, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh(book)
            except LedgerError as exc:
                log.warning("prices: the catalogue could not be read (%s); the last one read stays in force", exc)
