"""A key's traffic rules through the gateway: IP allow-lists, requests and tokens per minute, parallel requests.

Both backends (the in-process rate store, and Redis's); each refusal has its
status, code and headers, and charges nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import openai
import pytest

from ledger.key_rules import KeyRules, parse_cidrs
from ledger.money import parse_usd
from tests.test_multiprocess import FLAT_FEE_NUSD, clients, cluster, fund, serving

HI = [{"role": "user", "content": "hi"}]


async def ruled_key(gw, rules: KeyRules, usd: str = "1") -> tuple[str, str]:
    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    await gw.ops.create_wallet(wallet_id)
    gw.wallets.append(wallet_id)
    await gw.ops.credit(wallet_id, parse_usd(usd), memo="test funding")
    new, _ = await gw.ops.create_key(wallet_id, "ruled", rules=rules)
    return wallet_id, new.secret


async def post(gw, secret: str, headers: dict[str, str] | None = None, content: str = "hi") -> tuple[int, dict, dict]:
    body = json.dumps({"model": "flat-fee", "messages": [{"role": "user", "content": content}]}).encode()
    return await gw.raw_post("/v1/chat/completions", body, secret, headers)


async def test_an_ip_allow_list_admits_only_its_addresses(gw) -> None:
    wallet_id, inside = await ruled_key(gw, KeyRules(ip_allow=parse_cidrs(["127.0.0.0/8"])))
    assert (await post(gw, inside))[0] == 200
    _, outside = await ruled_key(gw, KeyRules(ip_allow=parse_cidrs(["10.0.0.0/8", "2001:db8::/32"])))
    status, headers, body = await post(gw, outside)
    assert status == 403 and body["error"]["code"] == "ip_not_allowed" and "127.0.0.1" in body["error"]["message"]
    assert headers["x-should-retry"] == "false"
    # Without trusted proxies, X-Forwarded-For is never believed: a client cannot claim an address.
    assert (await post(gw, outside, {"X-Forwarded-For": "10.1.2.3"}))[0] == 403


@pytest.mark.parametrize("forwarded, status", [("10.1.2.3", 200), ("2001:db8::5", 200), ("192.0.2.1", 403),
                                              ("10.1.2.3, 192.0.2.1", 403), ("192.0.2.1, 10.1.2.3", 200),
                                              ("not-an-address", 403)])
async def test_behind_a_trusted_proxy_the_client_is_the_right_most_untrusted_hop(gateway_factory, forwarded: str,
                                                                                 status: int) -> None:
    gw = await gateway_factory(traffic={"trusted_proxies": ["127.0.0.1/32"]})
    _, secret = await ruled_key(gw, KeyRules(ip_allow=parse_cidrs(["10.0.0.0/8", "2001:db8::/32"])))
    assert (await post(gw, secret, {"X-Forwarded-For": forwarded}))[0] == status


async def test_requests_per_minute_get_a_429_with_retry_after_and_cost_nothing(gw) -> None:
    wallet_id, secret = await ruled_key(gw, KeyRules(rpm=3, tpm=1_000_000))
    for _ in range(3):
        assert (await post(gw, secret))[0] == 200
    status, headers, body = await post(gw, secret)
    assert status == 429, body
    assert body["error"]["code"] == "rate_limit_exceeded" and body["error"]["type"] == "requests"
    assert "requests per min (RPM): Limit 3" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1 and headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-limit-tokens"] == "1000000"
    await gw.settled_everything()
    assert await gw.balance(wallet_id) == parse_usd("1") - 3 * FLAT_FEE_NUSD
    with pytest.raises(openai.RateLimitError):  # the SDK reads it as a rate limit (max_retries=0)
        await gw.client(secret).chat.completions.create(model="flat-fee", messages=HI)


async def test_tokens_per_minute_count_what_requests_used(gw) -> None:
    _, secret = await ruled_key(gw, KeyRules(tpm=5))
    assert (await post(gw, secret))[0] == 200  # the fake answers with more than 5 tokens
    status, _, body = await post(gw, secret)
    assert status == 429 and body["error"]["type"] == "tokens" and body["error"]["code"] == "rate_limit_exceeded"


async def test_parallel_requests_beyond_the_limit_are_refused_until_one_ends(gw) -> None:
    wallet_id, secret = await ruled_key(gw, KeyRules(parallel_max=1))
    slow = asyncio.ensure_future(post(gw, secret, content="FAKE:latency_ms=600"))
    await asyncio.sleep(0.2)
    status, headers, body = await post(gw, secret)
    assert status == 429 and body["error"]["code"] == "concurrency_limit_exceeded" and headers["Retry-After"] == "1"
    assert (await slow)[0] == 200
    assert (await post(gw, secret))[0] == 200  # the slot was freed
    # A stream frees its slot too, when it ends.
    client = gw.client(secret)
    chunks = [c async for c in await client.chat.completions.create(model="flat-fee", messages=HI, stream=True)]
    assert chunks
    assert (await post(gw, secret))[0] == 200


async def leave_mid_stream(gw, secret: str) -> str:
    """A client that reads two chunks of a long stream and goes away; the request's id."""
    raw = await gw.client(secret).chat.completions.with_raw_response.create(
        model="flat-fee", stream=True,
        messages=[{"role": "user", "content": "FAKE:completion_tokens=200 FAKE:chunk_delay_ms=20"}])
    stream = raw.parse()
    received = 0
    async for chunk in stream:
        received += bool(chunk.choices and chunk.choices[0].delta.content)
        if received == 2:
            break
    await stream.close()
    return raw.headers["x-request-id"]


async def answered_within(gw, secret: str, seconds: float) -> int:
    """The status of the first request that is not refused for parallel slots, asked until `seconds` pass."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        status, _, body = await post(gw, secret)
        if status != 429 or asyncio.get_running_loop().time() > deadline:
            return status
        assert body["error"]["code"] == "concurrency_limit_exceeded", body
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("ending", ["client_leaves_mid_stream", "upstream_error", "upstream_drops_answer",
                                    "upstream_cuts_stream"])
async def test_a_parallel_slot_is_freed_however_its_request_ends(gw, ending: str) -> None:
    wallet_id, secret = await ruled_key(gw, KeyRules(parallel_max=1))
    if ending == "client_leaves_mid_stream":
        await leave_mid_stream(gw, secret)
    elif ending == "upstream_cuts_stream":
        client = gw.client(secret)
        with pytest.raises(openai.APIError):  # the stream ends without [DONE]: the SDK reports it
            async for _ in await client.chat.completions.create(
                    model="flat-fee", stream=True,
                    messages=[{"role": "user", "content": "FAKE:completion_tokens=20 FAKE:drop_after=2"}]):
                pass
    else:
        directive = "FAKE:error=500" if ending == "upstream_error" else "FAKE:drop_after=0"
        status, _, _ = await post(gw, secret, content=directive)
        assert status == (500 if ending == "upstream_error" else 502)
    # The slot is free again (a client that left is noticed at the next chunk), not after its 900 s time to live.
    assert await answered_within(gw, secret, 3.0) == 200
    await gw.assert_no_holds()


async def test_tokens_per_minute_count_a_stream_its_client_left(gw) -> None:
    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    await gw.ops.create_wallet(wallet_id)
    gw.wallets.append(wallet_id)
    await gw.ops.credit(wallet_id, parse_usd("1"), memo="test funding")
    rules = KeyRules(tpm=1_000_000, parallel_max=1)
    new, _ = await gw.ops.create_key(wallet_id, "ruled", rules=rules)
    request_id = await leave_mid_stream(gw, new.secret)
    usage = (await gw.usage(request_id, new.secret))["usage"]
    assert usage["completion_tokens"] >= 2 and usage["total_tokens"] < 200, usage  # charged for what it consumed
    store = gw.state.proxy._traffic._store  # the gateway's own rate store: in-process, or Redis's
    deadline = asyncio.get_running_loop().time() + 3
    while not (probe := await store.admit(new.key_id, rules, "probe", 1)).admitted:  # until the stream has ended
        assert asyncio.get_running_loop().time() < deadline, probe
        await asyncio.sleep(0.05)
    # What the minute counts is what the request was charged for (the previous minute weighs a little less).
    assert probe.tokens == pytest.approx(usage["total_tokens"], rel=0.05), (probe, usage)


async def test_rules_are_given_and_checked_through_the_wallet_api(gw) -> None:
    from tests.test_api_permissions import call, make_org

    org = await make_org(gw)
    status, key = await call(gw, "POST", "/api/keys", org.secrets["owner"],
                             {"rpm": 60, "max_parallel": 4, "ip_allow": ["10.0.0.0/8", "2001:DB8::1/32"]})
    assert status == 201 and key["rpm"] == 60 and key["ip_allow"] == ["10.0.0.0/8", "2001:db8::/32"], key
    for bad, param in (({"ip_allow": ["10.0.0.0/33"]}, "ip_allow"), ({"rpm": 0}, "rpm"), ({"tpm": "5"}, "tpm"),
                       ({"ip_allow": []}, "ip_allow")):
        status, answer = await call(gw, "POST", "/api/keys", org.secrets["owner"], bad)
        assert status == 400 and answer["error"]["param"] == param, (bad, answer)
    status, changed = await call(gw, "PATCH", f"/api/keys/{key['id']}", org.secrets["owner"], {"rpm": 1})
    assert status == 200 and changed["rpm"] == 1 and changed["ip_allow"] is None and changed["max_parallel"] is None


async def test_requests_per_minute_and_parallel_slots_hold_across_two_processes(tmp_path: Path,
                                                                                fake_upstream: str) -> None:
    async with cluster(tmp_path, fake_upstream) as (env, config, ops), serving(env, config) as ports:
        await fund(ops, "rated", 100 * FLAT_FEE_NUSD)
        rated, _ = await ops.create_key("rated", "rated", rules=KeyRules(rpm=7))
        narrow, _ = await ops.create_key("rated", "narrow", rules=KeyRules(parallel_max=2))

        async def one(client: openai.AsyncOpenAI, content: str, code: str) -> bool:
            try:
                await client.chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": content}])
                return True
            except openai.RateLimitError as exc:
                assert exc.code == code and exc.response.headers["retry-after"].isdigit(), exc
                return False

        by_rate = clients(ports, rated.secret)
        served = await asyncio.gather(*(one(by_rate[i % 2], "hi", "rate_limit_exceeded") for i in range(30)))
        assert sum(served) == 7
        # Eight slow requests at once, four on each process: two slots in all.
        by_slot = clients(ports, narrow.secret)
        served = await asyncio.gather(*(one(by_slot[i % 2], "FAKE:latency_ms=1500", "concurrency_limit_exceeded")
                                        for i in range(8)))
        assert sum(served) == 2
        # Both slots came back when their requests ended, whichever process took them.
        assert all(await asyncio.gather(*(one(c, "hi", "concurrency_limit_exceeded") for c in by_slot)))
