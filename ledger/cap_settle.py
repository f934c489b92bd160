"""What settling a batch does to its spend caps, written once for both books.

Each book calls settled_cap_spend() after writing the batch and adds those
amounts to the cap rows in the same transaction; with_caps() puts the rows as
that transaction left them on each result, for the hold store's mirror.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ledger.book import SettleOutcome, SettleResult, UsageRecord
from ledger.caps import CapBalance


def settled_cap_spend(items: Sequence[UsageRecord], results: Sequence[SettleResult]) -> dict[str, int]:
    """What the requests settled now add to each cap: their cost (replays and refusals add nothing)."""
    spend: dict[str, int] = {}
    for item, result in zip(items, results, strict=True):
        if item.caps and item.cost_nusd and result.outcome is SettleOutcome.SETTLED:
            for cap_id in item.caps:
                spend[cap_id] = spend.get(cap_id, 0) + item.cost_nusd
    return spend


def with_caps(items: Sequence[UsageRecord], results: list[SettleResult],
              caps: dict[str, CapBalance]) -> list[SettleResult]:
    """Each settled result with its caps as the same transaction left them."""
    if not caps:
        return results
    return [
        replace(result, caps=tuple(caps[c] for c in item.caps if c in caps))
        if item.caps and result.outcome is SettleOutcome.SETTLED else result
        for item, result in zip(items, results, strict=True)
    ]
