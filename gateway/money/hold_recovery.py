"""The heartbeat that lets an idle gateway notice that Redis lost its data.

A busy gateway notices at its next reserve (the reserve script checks the hold
store's generation). One that reserves nothing may still have holds in flight
(slow requests), and they must be registered again before anyone else grants
new holds on the same wallets: this task checks the generation every
limits.redis_heartbeat_interval_s and, when it changed, re-registers this
process's open holds. The grace (limits.redis_recovery_grace_s) that new holds
wait for is what makes that in time; see ledger/redis_holds.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, runtime_checkable

from ledger.holds import HoldStore, HoldStoreUnavailable

log = logging.getLogger("meterway.hold_recovery")


@runtime_checkable
class Recoverable(Protocol):
    """A hold store that can lose its data while this process lives (RedisHolds)."""

    async def check_generation(self) -> bool: ...


async def heartbeat_forever(holds: HoldStore, interval_s: float) -> None:
    """Check the generation forever; the in-process store cannot lose data alone and needs none."""
    if not isinstance(holds, Recoverable):
        return
    while True:
        try:
            await holds.check_generation()
        except HoldStoreUnavailable as exc:
            log.debug("hold store heartbeat failed, will retry: %s", exc)
        except Exception:
            log.exception("hold store heartbeat failed, will retry")
        await asyncio.sleep(interval_s)
