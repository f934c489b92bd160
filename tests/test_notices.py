"""Cache notices over Redis pub/sub: delivered to every listener, and a lost connection costs a resync, not a stale cache."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from gateway.http.notices import Notice, Notices, Subject, parse
from ledger.redis_notices import RedisNotices
from tests.test_holds_contract import connect_redis


async def wait_for(condition, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_notices_parse_what_they_send() -> None:
    assert parse("key:key_1") == Notice(Subject.KEY, "key_1")
    assert parse("bot:b:with:colons") == Notice(Subject.BOT, "b:with:colons")
    assert parse("all:") == Notice(Subject.ALL)
    assert parse("nonsense:x") is None and parse("key:") is None and parse("") is None


async def test_a_notice_reaches_every_process_and_this_one_at_once() -> None:
    client, other = await connect_redis(), await connect_redis()
    channel = f"mwt-{uuid.uuid4().hex[:8]}:notices"
    here, there = Notices(RedisNotices(client, channel, 2.0)), Notices(RedisNotices(other, channel, 2.0))
    heard_here: list[Notice] = []
    heard_there: list[Notice] = []
    here.subscribe(heard_here.append)
    there.subscribe(heard_there.append)
    subscribed = asyncio.Event()
    listening = asyncio.create_task(there.run(subscribed))
    try:
        await asyncio.wait_for(subscribed.wait(), 5)
        assert heard_there == [Notice(Subject.ALL)]  # joining forgets everything first
        await here.announce(Subject.BOT, "b1")
        assert heard_here == [Notice(Subject.BOT, "b1")]  # at once, before any round trip
        await wait_for(lambda: Notice(Subject.BOT, "b1") in heard_there)
        # The listener's connection is killed: it reconnects, and forgets everything again.
        await client.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await wait_for(lambda: heard_there.count(Notice(Subject.ALL)) >= 2, 10)
        await here.announce(Subject.KEY, "k1")
        await wait_for(lambda: Notice(Subject.KEY, "k1") in heard_there)
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await client.aclose()
        await other.aclose()


async def test_a_notice_without_redis_is_kept_here_and_reported() -> None:
    dead = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    bus = RedisNotices(dead, "mwt:notices", 0.5)
    assert await bus.publish("key:k1") is False  # other processes fall back to their cache TTL
    notices = Notices(bus)
    heard: list[Notice] = []
    notices.subscribe(heard.append)
    await notices.announce(Subject.KEY, "k1")
    assert heard == [Notice(Subject.KEY, "k1")]
    await dead.aclose()


async def test_embedded_notices_stay_in_the_process() -> None:
    notices = Notices(None)
    heard: list[Notice] = []
    notices.subscribe(heard.append)
    subscribed = asyncio.Event()
    await notices.run(subscribed)  # returns at once: nothing to listen to
    assert subscribed.is_set()
    await notices.announce(Subject.MEMBER, "m1")
    assert heard == [Notice(Subject.MEMBER, "m1")]
