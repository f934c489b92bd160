"""Notices over Redis pub/sub: a change made in one gateway process reaches every other's caches at once.

A notice is a short text ("key:<id>", "bot:<id>", "member:<id>"): what
changed, never its new value, so a cache forgets the entry and reads the book
again. Pub/sub keeps nothing for a subscriber that was away, so after any
reconnection the listener asks its caches to forget everything (``resync``):
a missed notice can cost a few book reads, never a stale limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis

from ledger.redis_batching import UNAVAILABLE

log = logging.getLogger("meterway.notices")

NOTICE_CHARS_MAX = 512
# How long listen() waits for a message before it checks its connection again, and
# how long it waits (doubling, up to the max) before it reconnects after an error.
POLL_S = 1.0
RECONNECT_DELAY_S = 0.1
RECONNECT_DELAY_MAX_S = 5.0


class RedisNotices:
    def __init__(self, client: aioredis.Redis, channel: str, timeout_s: float) -> None:
        self._client = client
        self.channel = channel
        self._timeout_s = timeout_s

    async def publish(self, notice: str) -> bool:
        """Send a notice to every listening process; False if Redis could not be reached (caches then expire by TTL)."""
        assert 0 < len(notice) <= NOTICE_CHARS_MAX, notice
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.publish(self.channel, notice)
        except UNAVAILABLE as exc:
            log.warning("notice %r not published (Redis unavailable: %s); other processes see it by their cache TTL",
                        notice, type(exc).__name__)
            return False
        return True

    async def listen(self, deliver: Callable[[str], None], resync: Callable[[], None],
                     subscribed: asyncio.Event | None = None) -> None:
        """Deliver each notice until cancelled, reconnecting (with resync) after every loss of the connection.

        ``subscribed`` is set while the subscription is live.
        """
        subscribed = subscribed or asyncio.Event()
        failures = 0
        while True:
            try:
                await self._listen_once(deliver, resync, subscribed)
            except UNAVAILABLE as exc:
                failures = 1 if subscribed.is_set() else failures + 1  # one that worked starts the back-off afresh
                subscribed.clear()
                delay = min(RECONNECT_DELAY_S * 2 ** (failures - 1), RECONNECT_DELAY_MAX_S)
                log.warning("notices: Redis connection lost (%s); reconnecting in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)

    async def _listen_once(self, deliver: Callable[[str], None], resync: Callable[[], None],
                           subscribed: asyncio.Event) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            async with asyncio.timeout(self._timeout_s):
                await pubsub.subscribe(self.channel)
            resync()  # whatever was published while nobody listened here is unknown: forget it all
            subscribed.set()
            while True:
                message = await pubsub.get_message(timeout=POLL_S)
                if message is not None and message.get("type") == "message":
                    data = message["data"]
                    deliver(data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data))
        finally:
            with contextlib.suppress(*UNAVAILABLE):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
