"""BYOK secrets: a provider key is in no log, no answer and no stored row in clear; the master key's failures.

The database scan reads every row of every table (SQLite or Postgres) and
every key of this test's Redis prefix, as text, and looks for the key and
for any eight-character piece of it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3

import asyncpg
import openai
import pytest
import redis.asyncio as aioredis

from gateway.money.secrets_box import secrets_box
from tests.test_api_permissions import call
from tests.test_byok import HEADER, MINI, byok_gateway, master_key, new_provider_key, org, upstream_auth, user


def pieces(secret: str, size: int = 8) -> list[str]:
    """The secret and every piece of it long enough to matter (its hint, the last four, is allowed)."""
    tail = secret[len("sk-byok-"):]  # the random part: the prefix is common to every test key
    return [tail[i:i + size] for i in range(len(tail) - size + 1)]


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> str:
    key = master_key()
    monkeypatch.setenv("MW_MASTER_KEY", key)
    monkeypatch.delenv("MW_MASTER_KEY_OLD", raising=False)
    return key


async def all_rows_text(gw) -> str:
    settings = gw.state.settings
    if settings.database_url is None:
        conn = sqlite3.connect(settings.sqlite_path)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            return "\n".join(repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"'))
        finally:
            conn.close()
    pg = await asyncpg.connect(settings.database_url)
    try:
        tables = [r[0] for r in await pg.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
        assert "mw_provider_keys" in tables
        return "\n".join([repr(dict(row)) for t in tables for row in await pg.fetch(f'SELECT * FROM "{t}"')])
    finally:
        await pg.close()


async def all_redis_text(gw) -> str:
    settings = gw.state.settings
    if settings.redis_url is None:
        return ""
    client = aioredis.from_url(settings.redis_url)
    found = []
    try:
        async for key in client.scan_iter(match=f"{settings.redis_prefix}*"):
            kind = (await client.type(key)).decode()
            value = {"string": client.get, "hash": client.hgetall, "zset": lambda k: client.zrange(k, 0, -1),
                     "set": client.smembers, "list": lambda k: client.lrange(k, 0, -1)}[kind](key)
            found.append(f"{key!r} {await value!r}")
    finally:
        await client.aclose()
    return "\n".join(found)


async def test_a_provider_key_is_in_no_log_answer_or_row(gateway_factory, fake_upstream, master, caplog) -> None:
    caplog.set_level(logging.DEBUG)  # every record of every logger, before any redaction
    gw = await byok_gateway(gateway_factory, fee_bps=500)
    wallet, management, key = await org(gw, "1")
    stored_key, header_key = new_provider_key("stored"), new_provider_key("header")
    answers: list[str] = []
    status, body = await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": stored_key})
    answers.append(repr((status, body)))
    answers.append(repr(await call(gw, "GET", "/api/provider-keys", management)))
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(model=MINI, messages=user("hi"))
    answers.append(repr((dict(raw.headers), raw.text)))
    stream = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("hi"), stream=True, stream_options={"include_usage": True},
        extra_headers={HEADER: header_key})
    answers.append(repr(dict(stream.headers)) + "".join([repr(c) async for c in stream.parse()]))
    # Failures too: the provider refusing the key, and the provider unreachable (both logged or relayed).
    for prompt in ("FAKE:error=401", "FAKE:error=500"):
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model=MINI, messages=user(prompt), extra_headers={HEADER: header_key})
        answers.append(repr((dict(refused.value.response.headers), refused.value.response.text)))
    answers.append(repr(await call(gw, "GET", f"/v1/usage/{raw.headers['x-request-id']}", key)))
    answers.append(repr(await call(gw, "GET", "/api/wallet/transactions", management)))
    await gw.settled_everything()
    assert (await upstream_auth(fake_upstream))[-4:-2] == [f"Bearer {stored_key}", f"Bearer {header_key}"]
    stored_text, redis_text, answers_text = await all_rows_text(gw), await all_redis_text(gw), "\n".join(answers)
    assert "mwk1." in stored_text  # the sealed key is there: the scan reads the right rows
    for secret in (stored_key, header_key):
        for piece in pieces(secret):
            assert piece not in stored_text, "a provider key in a database row"
            assert piece not in redis_text, "a provider key in Redis"
            assert piece not in answers_text, "a provider key in an answer"
            assert piece not in caplog.text, "a provider key in a log line"


async def test_without_a_master_key_nothing_is_stored_and_everything_else_works(
        gateway_factory, fake_upstream, monkeypatch) -> None:
    for given, says in ((None, "MW_MASTER_KEY is not set"), ("", "MW_MASTER_KEY is not set"),
                        ("not base64 !!", "not base64 or hex"),
                        (base64.b64encode(os.urandom(16)).decode(), "holds 16 bytes, not 32")):
        if given is None:
            monkeypatch.delenv("MW_MASTER_KEY", raising=False)
        else:
            monkeypatch.setenv("MW_MASTER_KEY", given)
        gw = await byok_gateway(gateway_factory)  # starts all the same
        _, management, key = await org(gw, "1")
        mine = new_provider_key("nomaster")
        status, answer = await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": mine})
        assert (status, answer["error"]["code"]) == (503, "provider_keys_unavailable"), answer
        assert says in answer["error"]["message"] and "openssl rand -base64 32" in answer["error"]["message"]
        assert mine not in str(answer) and (given or "(none)") not in answer["error"]["message"]
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"))  # a plain call
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"), extra_headers={HEADER: mine})
        assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {mine}"  # the header needs no master key


async def test_a_key_sealed_under_another_master_key_is_refused_then_opens_while_rotating(
        gateway_factory, fake_upstream, monkeypatch, master) -> None:
    gw = await byok_gateway(gateway_factory)
    wallet, management, key = await org(gw, "0")
    mine = new_provider_key("rotate")
    assert (await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": mine}))[0] == 201
    # The gateway restarted with another master key (its box is made from the environment at start).
    monkeypatch.setenv("MW_MASTER_KEY", master_key())
    gw.state.byok.stored.box = secrets_box(gw.state.settings.byok)
    gw.state.byok.stored.forget_all()
    seen = len(await upstream_auth(fake_upstream))
    with pytest.raises(openai.APIStatusError) as refused:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"))
    assert refused.value.status_code == 503 and refused.value.body["code"] == "provider_key_unreadable"
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert len(await upstream_auth(fake_upstream)) == seen  # nothing forwarded, nothing charged
    assert await gw.balance(wallet) == 0
    # Rotating: the new key seals, the old one (MW_MASTER_KEY_OLD) still opens what it sealed.
    monkeypatch.setenv("MW_MASTER_KEY_OLD", f"{master_key()}, {master}")
    gw.state.byok.stored.box = secrets_box(gw.state.settings.byok)
    gw.state.byok.stored.forget_all()
    await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"))
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {mine}"


@pytest.mark.parametrize("backend", ["production"])  # embedded is one process: there is no other gateway to tell
async def test_a_stored_key_reaches_every_gateway_at_once(gateway_factory, fake_upstream, master, backend) -> None:
    first, second = await byok_gateway(gateway_factory), await byok_gateway(gateway_factory)
    await asyncio.sleep(0.2)  # both listening for notices
    wallet, management, key = await org(first, "1")
    second.wallets.append(wallet)
    await second.client(key).chat.completions.create(model=MINI, messages=user("hi"))  # caches "no key" for the wallet
    mine = new_provider_key("notice")
    assert (await call(first, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": mine}))[0] == 201
    for _ in range(20):  # within a second, not the cache's 5 s
        await asyncio.sleep(0.05)
        if second.state.byok.stored.known_none(wallet) is False:
            break
    await second.client(key).chat.completions.create(model=MINI, messages=user("hi"))
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {mine}"

