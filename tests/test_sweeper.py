"""The expiry sweeper cannot die: a hold nobody settles is released even after the sweep failed unexpectedly."""

from __future__ import annotations

import asyncio

from gateway.metrics import Metrics
from gateway.money.sweeper import sweep_forever
from ledger.holds import ExpiredHold, ReserveStatus
from ledger.inprocess_holds import InProcessHolds


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FailingOnce(InProcessHolds):
    """In-process holds whose first sweep raises an error nobody planned for."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.failures = 0

    async def expire_due(self, limit: int) -> list[ExpiredHold]:
        if self.failures == 0:
            self.failures += 1
            raise RuntimeError("a bug in the sweep")
        return await super().expire_due(limit)


async def test_the_sweeper_survives_an_unexpected_error(book) -> None:
    clock = Clock()
    holds = FailingOnce(clock)
    await book.create_wallet("w1")
    await holds.sync("w1", 1000, 1)
    assert (await holds.reserve("w1", "r1", 600, 10)).status is ReserveStatus.RESERVED
    clock.now = 11  # expired: its gateway died
    sweeper = asyncio.create_task(sweep_forever(book, holds, 0.01, 16, Metrics.create()))
    try:
        async with asyncio.timeout(5):
            while (await holds.wallet("w1")).held_nusd:  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
    assert holds.failures == 1
    mirror = await holds.wallet("w1")
    assert mirror is not None and (mirror.held_nusd, mirror.hold_count) == (0, 0)
