"""Cache notices: a change to a key, a bot or a member reaches every gateway process's caches within a second.

The key cache (auth.py) and the management-key cache (api_base.py) keep
records for a few seconds so the request path reads no database. A handler
that changes one of those records announces it: this process forgets the
entry at once, and with Redis every other process does too, through pub/sub
(ledger/redis_notices.py). Embedded, there is one process and nothing to send.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from ledger.redis_notices import RedisNotices

log = logging.getLogger("meterway.notices")


class Subject(enum.Enum):
    KEY = "key"  # an inference key: revoked, limits changed
    BOT = "bot"  # a bot's caps or friendly answer: every key of the bot
    MEMBER = "member"  # a member's role or monthly limit: its management and inference keys
    MANAGEMENT_KEY = "mkey"
    PROVIDER_KEYS = "pkeys"  # a wallet's stored provider keys (BYOK): subject_id is the wallet
    ALL = "all"  # after a lost connection: forget everything


@dataclass(frozen=True)
class Notice:
    subject: Subject
    subject_id: str = ""


Listener = Callable[[Notice], None]


def parse(text: str) -> Notice | None:
    kind, _, subject_id = text.partition(":")
    try:
        subject = Subject(kind)
    except ValueError:
        return None
    return Notice(subject, subject_id) if subject_id or subject is Subject.ALL else None


class Notices:
    def __init__(self, bus: RedisNotices | None) -> None:
        self._bus = bus
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def announce(self, subject: Subject, subject_id: str) -> None:
        """Forget the subject here now, then tell the other processes (best effort: their TTL is the fallback)."""
        self._deliver(Notice(subject, subject_id))
        if self._bus is not None:
            await self._bus.publish(f"{subject.value}:{subject_id}")

    async def run(self, subscribed: asyncio.Event | None = None) -> None:
        """Listen for other processes' notices until cancelled (returns at once when embedded)."""
        if self._bus is None:
            if subscribed is not None:
                subscribed.set()
            return
        await self._bus.listen(self._received, lambda: self._deliver(Notice(Subject.ALL)), subscribed)

    def _received(self, text: str) -> None:
        notice = parse(text)
        if notice is None:
            log.warning("notices: ignored an unknown notice %r", text[:80])
            return
        self._deliver(notice)

    def _deliver(self, notice: Notice) -> None:
        for listener in self._listeners:
            listener(notice)
