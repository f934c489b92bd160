"""The price catalogue: each model's prices, versioned by the time from which each version is in force.

A request is priced by the version in force when it started, and its usage
row names that version (`<model>@<effective_at>`). Versions are added, never
changed: adding the same version again is a no-op, and adding different
prices under a version that exists is refused (PriceConflict), so a price
that was in force stays what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ledger.errors import LedgerError

CONFIG_VERSION = "config"  # the bootstrap: [models] in the configuration, in force until a catalogue version is
VERSIONS_PER_IMPORT_MAX = 10_000


class PriceConflict(LedgerError):
    code = "price_conflict"


@dataclass(frozen=True)
class PriceVersion:
    model: str
    effective_at: str  # ISO 8601 UTC, "2026-12-01T00:00:00Z"
    input_per_1m_nusd: int
    cached_input_per_1m_nusd: int
    output_per_1m_nusd: int
    per_call_nusd: int = 0
    created_at: str | None = None

    def __post_init__(self) -> None:
        assert self.model and self.effective_at.endswith("Z"), self
        for value in (self.input_per_1m_nusd, self.cached_input_per_1m_nusd, self.output_per_1m_nusd,
                      self.per_call_nusd):
            assert isinstance(value, int) and value >= 0, self

    @property
    def version(self) -> str:
        return f"{self.model}@{self.effective_at}"

    def same_prices(self, other: PriceVersion) -> bool:
        return (self.input_per_1m_nusd, self.cached_input_per_1m_nusd, self.output_per_1m_nusd,
                self.per_call_nusd) == (other.input_per_1m_nusd, other.cached_input_per_1m_nusd,
                                        other.output_per_1m_nusd, other.per_call_nusd)


class Prices(Protocol):
    async def price_versions(self) -> list[PriceVersion]:
        """Every version, by model, then effective time."""
        ...

    async def add_price_versions(self, versions: Sequence[PriceVersion]) -> int:
        """Add the new ones in one transaction; how many were new. PriceConflict if one changes a version."""
        ...
