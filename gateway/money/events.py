"""Events the gateway decides on: a cap reached (cap.reached, or key.limit_reached for a key's own limit).

Written off the request path: the refusal is answered at once, and the event
is written by a background task (at most TASKS_MAX at a time; beyond that it
is dropped with a log line, since the refusal itself already told the
client). Each fires once per cap and window: its id is the cap row's id, and
the outbox refuses a second row with it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.money.caps import cap_name
from ledger.caps import CapScope, CapSpec
from ledger.errors import LedgerError
from ledger.store import LedgerStore
from ledger.times import utc_text

log = logging.getLogger("meterway.events")
TASKS_MAX = 64
SEEN_MAX = 100_000


def cap_event(wallet_id: str, key_id: str, cap: CapSpec) -> tuple[str, str, dict[str, Any]]:
    """(event id, type, payload) of a reached cap."""
    kind = "key.limit_reached" if cap.scope is CapScope.KEY else "cap.reached"
    payload: dict[str, Any] = {"cap_id": cap.cap_id, "cap": cap_name(cap), "scope": cap.scope.value,
                               "window": cap.window.value, "limit_nusd": cap.limit_nusd, "key_id": key_id,
                               "resets_at": None if cap.until is None else utc_text(cap.until)}
    return f"{kind}:{wallet_id}:{cap.cap_id}", kind, payload


class Events:
    def __init__(self, store: LedgerStore) -> None:
        self._store = store
        self._tasks: set[asyncio.Task[None]] = set()
        self._seen: set[str] = set()

    def cap_reached(self, wallet_id: str, key_id: str, cap: CapSpec) -> None:
        event_id, kind, payload = cap_event(wallet_id, key_id, cap)
        if event_id in self._seen:
            return  # this process wrote it already: no database write per refused request
        if len(self._tasks) >= TASKS_MAX:
            log.warning("events: %s not written (%d writes pending)", event_id, len(self._tasks))
            return
        if len(self._seen) >= SEEN_MAX:
            self._seen.clear()
        self._seen.add(event_id)
        task = asyncio.create_task(self._write(event_id, wallet_id, kind, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, event_id: str, wallet_id: str, kind: str, payload: dict[str, Any]) -> None:
        try:
            await self._store.emit_event(event_id, wallet_id, kind, payload)
        except LedgerError as exc:
            self._seen.discard(event_id)  # the next refusal tries again
            log.warning("events: %s not written: %s", event_id, exc)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
