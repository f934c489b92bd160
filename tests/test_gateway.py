"""The gateway end to end, through the official openai SDK, on both backends.

Every test ends with the gateway_factory checks: no hold left counted and the
ledger's invariants intact (see conftest.py).
"""

from __future__ import annotations

import asyncio

import openai
import pytest

from config.pricing import TokenUsage, cost_nusd
from ledger.money import format_usd, parse_usd
from tests.gateway_harness import ADMIN_TOKEN
from tests.openapi_schema import spec_available, validate

MINI = "gpt-4o-mini"


def price_of(gw, model: str):
    return gw.state.routes[model].price


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_exact_cost_headers_for_known_usage(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=1000 FAKE:completion_tokens=500 FAKE:cached_tokens=200"))
    completion = raw.parse()
    # 800 fresh x $0.15/M + 200 cached x $0.075/M + 500 out x $0.60/M = $0.000435
    assert raw.headers["x-usage-cost"] == "0.000435"
    assert raw.headers["x-total-tokens"] == "1500"
    assert raw.headers["x-model"] == MINI
    request_id = raw.headers["x-request-id"]
    assert completion.usage.prompt_tokens == 1000
    assert await gw.balance(wallet) == parse_usd("1") - 435_000
    usage = await gw.usage(request_id, key)
    assert (usage["cost"], usage["cost_nusd"], usage["charged_nusd"]) == ("0.000435", 435_000, 435_000)
    assert usage["usage"] == {"prompt_tokens": 1000, "cached_tokens": 200, "completion_tokens": 500, "total_tokens": 1500}
    assert usage["usage_source"] == "upstream"
    [transfer] = [t for t in await gw.ops.transactions(wallet) if t.transfer.request_id == request_id]
    assert transfer.transfer.amount_nusd == 435_000


async def test_stream_final_chunk_carries_cost_and_ledger_agrees(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=120 FAKE:completion_tokens=4"), stream=True,
        stream_options={"include_usage": True})
    request_id = raw.headers["x-request-id"]
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "hello hello hello hello"
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 4
    expected = cost_nusd(price_of(gw, MINI), TokenUsage(120, 4))
    assert format_usd(expected) == str(final.usage.model_extra["cost"]) or parse_usd(str(final.usage.model_extra["cost"])) == expected
    usage = await gw.usage(request_id, key)
    assert usage["cost_nusd"] == expected and usage["status"] == "ok"
    assert await gw.balance(wallet) == parse_usd("1") - expected


async def test_stream_without_include_usage_hides_the_usage_chunk_but_charges(gw) -> None:
    wallet, key = await gw.funded_key("1")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=10 FAKE:completion_tokens=3"), stream=True)
    chunks = [chunk async for chunk in raw.parse()]
    assert all(chunk.choices for chunk in chunks), "a usage-only chunk reached a client that did not ask for it"
    expected = cost_nusd(price_of(gw, MINI), TokenUsage(10, 3))
    assert (await gw.usage(raw.headers["x-request-id"], key))["cost_nusd"] == expected
    assert await gw.balance(wallet) == parse_usd("1") - expected


async def test_client_cancels_mid_stream_pays_prompt_plus_streamed_tokens(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    messages = user("Tell me a long story FAKE:completion_tokens=40 FAKE:chunk_delay_ms=100")
    full = await client.chat.completions.create(model=MINI, messages=messages)  # same prompt, not streamed
    raw = await client.chat.completions.with_raw_response.create(model=MINI, messages=messages, stream=True)
    request_id = raw.headers["x-request-id"]
    stream = raw.parse()
    received = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
            if received == 3:
                break
    await stream.close()
    usage = await gw.usage(request_id, key)
    assert usage["status"] == "client_closed" and usage["usage_source"] == "tokenizer"
    assert usage["usage"]["prompt_tokens"] == full.usage.prompt_tokens
    assert usage["usage"]["completion_tokens"] == received
    expected = cost_nusd(price_of(gw, MINI), TokenUsage(full.usage.prompt_tokens, received))
    assert usage["cost_nusd"] == expected
    full_cost = cost_nusd(price_of(gw, MINI), TokenUsage(full.usage.prompt_tokens, full.usage.completion_tokens))
    assert await gw.balance(wallet) == parse_usd("1") - expected - full_cost


async def test_upstream_error_is_passed_through_and_not_charged(gw) -> None:
    wallet, key = await gw.funded_key("1")
    before = await gw.totals()
    with pytest.raises(openai.InternalServerError) as caught:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("FAKE:error=500"))
    assert caught.value.status_code == 500
    assert caught.value.response.headers["x-request-id"].startswith("req_")
    with pytest.raises(openai.RateLimitError):
        await gw.client(key).chat.completions.create(model=MINI, messages=user("FAKE:error=429"), stream=True)
    assert await gw.balance(wallet) == parse_usd("1")
    assert (await gw.totals()).transfer_count == before.transfer_count


async def test_upstream_drop_mid_stream_pays_prompt_plus_relayed_tokens(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=50 FAKE:completion_tokens=20 FAKE:drop_after=3"), stream=True,
        stream_options={"include_usage": True})
    received = 0
    with pytest.raises(openai.APIError):
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                received += 1
    assert received == 3
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert usage["status"] == "upstream_dropped" and usage["usage"]["completion_tokens"] == 3
    # No upstream usage came: the prompt is counted by the tokenizer, not the directive.
    prompt = usage["usage"]["prompt_tokens"]
    assert prompt > 0
    expected = cost_nusd(price_of(gw, MINI), TokenUsage(prompt, 3))
    assert usage["cost_nusd"] == expected
    assert await gw.balance(wallet) == parse_usd("1") - expected


async def test_missing_upstream_usage_is_counted_with_the_tokenizer(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    reference = await client.chat.completions.create(model="gpt-3.5-turbo", messages=user("count me please"))
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo", messages=user("count me please FAKE:omit_usage=1"))
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert usage["usage_source"] == "tokenizer"
    assert usage["usage"]["completion_tokens"] == reference.usage.completion_tokens
    # The directive adds tokens to the prompt, so the count is the reference's plus those.
    assert usage["usage"]["prompt_tokens"] > reference.usage.prompt_tokens


async def test_completions_and_embeddings_are_metered(gw) -> None:
    wallet, key = await gw.funded_key("1")
    client = gw.client(key)
    completion = await client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi FAKE:completion_tokens=7")
    parsed = completion.parse()
    expected = cost_nusd(price_of(gw, "gpt-3.5-turbo-instruct"), TokenUsage(parsed.usage.prompt_tokens, 7))
    assert completion.headers["x-usage-cost"] == format_usd(expected)
    embedding = await client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=["a b c", "d e"])
    tokens = embedding.parse().usage.prompt_tokens
    assert embedding.headers["x-usage-cost"] == format_usd(cost_nusd(price_of(gw, "text-embedding-3-small"), TokenUsage(tokens, 0)))
    streamed = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="x FAKE:completion_tokens=2", stream=True)
    assert "".join([c.choices[0].text async for c in streamed if c.choices]) == "hello hello"


async def test_models_lists_what_the_key_may_use(gw) -> None:
    _, key = await gw.funded_key("0")
    models = [m.id async for m in gw.client(key).models.list()]
    assert models == sorted(gw.state.routes)


async def test_insufficient_funds_is_a_402_that_sdks_do_not_retry(gw) -> None:
    wallet, key = await gw.funded_key("0.000001")
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hello"), max_tokens=1000)
    error = caught.value
    assert error.status_code == 402
    assert error.response.headers["x-should-retry"] == "false"
    body = error.response.json()["error"]
    assert body["type"] == body["code"] == "insufficient_quota"
    assert "0.000001" in body["message"]
    assert await gw.balance(wallet) == 1000


async def test_tight_estimate_admits_what_the_coarse_bound_refuses(gw) -> None:
    # A prompt padded with JSON-heavy structure: the byte bound is far above its tokens.
    price = price_of(gw, "gpt-3.5-turbo")
    messages = [{"role": "user", "content": "hi"}] * 40
    body_bytes = len(str(messages))
    coarse = cost_nusd(price, TokenUsage(body_bytes, 10))
    wallet, key = await gw.funded_key(format_usd(coarse * 2 // 3))
    reply = await gw.client(key).chat.completions.create(model="gpt-3.5-turbo", messages=messages, max_tokens=10)
    assert reply.usage.completion_tokens == 5


BAD_INPUTS = [
    ("malformed json", b'{"model": "gpt-4o-mini", "messages": [', 400, None),
    ("not an object", b'[1, 2]', 400, None),
    ("missing model", b'{"messages": [{"role": "user", "content": "x"}]}', 400, "model"),
    ("unknown model", b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
    ("negative max_tokens", b'{"model": "gpt-4o-mini", "max_tokens": -5, "messages": [{"role": "user", "content": "x"}]}', 400, "max_tokens"),
    ("string max_tokens", b'{"model": "gpt-4o-mini", "max_tokens": "9", "messages": [{"role": "user", "content": "x"}]}', 400, "max_tokens"),
    ("missing messages", b'{"model": "gpt-4o-mini"}', 400, "messages"),
    ("embedding model on chat", b'{"model": "text-embedding-3-small", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
]


async def test_bad_input_gets_openai_shaped_errors_and_costs_nothing(gw) -> None:
    wallet, key = await gw.funded_key("1")
    before = await gw.totals()
    seen = []
    for name, body, status, param in BAD_INPUTS:
        got, headers, payload = await gw.raw_post("/v1/chat/completions", body, key)
        assert got == status, (name, payload)
        assert set(payload["error"]) == {"message", "type", "param", "code"}, name
        assert payload["error"]["param"] == param, (name, payload)
        if spec_available():
            validate("ErrorResponse", payload)
        seen.append(name)
    oversized = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * 300_000 + b'"}]}'
    got, _, payload = await gw.raw_post("/v1/chat/completions", oversized, key)
    assert got == 413 and payload["error"]["code"] == "request_too_large"
    for secret, why in [(None, "no key"), ("sk-not-ours", "foreign key"), ("mw-" + "A" * 43, "unknown key")]:
        got, headers, payload = await gw.raw_post("/v1/chat/completions", BAD_INPUTS[3][1], secret)
        assert got == 401 and payload["error"]["code"] == "invalid_api_key", why
    assert len(seen) == len(BAD_INPUTS)
    assert await gw.balance(wallet) == parse_usd("1")
    after = await gw.totals()
    assert after.transfer_count == before.transfer_count and after.usage_charged_nusd == before.usage_charged_nusd


async def test_revoked_key_is_refused(gw) -> None:
    wallet, key = await gw.funded_key("1")
    [record] = await gw.state.book.list_keys(wallet)
    status, _ = await gw.get_json("/v1/models", key)
    assert status == 200
    async with __import__("aiohttp").ClientSession() as session:
        async with session.delete(f"{gw.base_url}/admin/keys/{record.key_id}", headers={"Authorization": "Bearer wrong"}) as r:
            assert r.status == 401
        async with session.delete(f"{gw.base_url}/admin/keys/{record.key_id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
            assert r.status == 200
    with pytest.raises(openai.AuthenticationError):
        await gw.client(key).chat.completions.create(model=MINI, messages=user("x"))


async def test_upstream_timeout_is_504_and_unreachable_is_502(gateway_factory) -> None:
    slow = await gateway_factory(limits={"upstream_total_timeout_s": 0.5, "hold_ttl_s": 5})
    wallet, key = await slow.funded_key("1")
    with pytest.raises(openai.APIStatusError) as caught:
        await slow.client(key).chat.completions.create(model=MINI, messages=user("FAKE:hang=1"))
    assert caught.value.status_code == 504 and caught.value.response.json()["error"]["code"] == "upstream_timeout"
    dead = await gateway_factory(upstream_url="http://127.0.0.1:9/v1")
    wallet2, key2 = await dead.funded_key("1")
    with pytest.raises(openai.APIStatusError) as caught:
        await dead.client(key2).chat.completions.create(model=MINI, messages=user("x"), stream=True)
    assert caught.value.status_code == 502 and caught.value.response.json()["error"]["code"] == "upstream_unreachable"
    assert await slow.balance(wallet) == parse_usd("1") and await dead.balance(wallet2) == parse_usd("1")


async def test_concurrent_requests_never_overspend_one_process(gw) -> None:
    n = 8
    wallet, key = await gw.funded_key(format_usd(n * parse_usd("0.01")))
    client = gw.client(key)

    async def one() -> bool:
        try:
            await client.chat.completions.create(model="flat-fee", messages=user("x"))
            return True
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            return False

    results = await asyncio.gather(*(one() for _ in range(5 * n)))
    assert sum(results) == n
    assert await gw.balance(wallet) == 0


async def test_metrics_expose_the_core_four(gw) -> None:
    wallet, key = await gw.funded_key("1")
    await gw.client(key).chat.completions.create(model=MINI, messages=user("FAKE:prompt_tokens=10 FAKE:completion_tokens=2"))
    async with __import__("aiohttp").ClientSession() as session:
        async with session.get(f"{gw.base_url}/metrics") as r:
            text = await r.text()
    assert 'meterway_requests_total{endpoint="chat",outcome="ok"} 1.0' in text
    assert 'meterway_tokens_total{kind="completion",model="gpt-4o-mini"} 2.0' in text
    expected = cost_nusd(price_of(gw, MINI), TokenUsage(10, 2))
    assert f'meterway_charged_nusd_total{{model="gpt-4o-mini"}} {float(expected)}' in text
    assert 'meterway_overhead_seconds_bucket{endpoint="chat",le="0.001"}' in text


async def test_gateway_answers_match_openais_published_schemas(gw) -> None:
    from tests.openapi_schema import require_spec

    require_spec()
    _, key = await gw.funded_key("1")
    status, models = await gw.get_json("/v1/models", key)
    assert status == 200
    validate("ListModelsResponse", models)
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:completion_tokens=3"), stream=True, stream_options={"include_usage": True})
    import orjson

    events = [line[6:] for line in (await raw.http_response.aread()).split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["usage"]["cost"] > 0
    status, _, error = await gw.raw_post("/v1/chat/completions", b"{", key)
    validate("ErrorResponse", error)


async def test_a_top_up_made_by_another_process_is_seen_without_restart(gw) -> None:
    wallet, key = await gw.funded_key("0")
    client = gw.client(key)
    with pytest.raises(openai.APIStatusError) as caught:
        await client.chat.completions.create(model="flat-fee", messages=user("x"))
    assert caught.value.status_code == 402
    # Credit the book directly, as the CLI in another process does: this
    # gateway's mirror of the wallet is not told.
    from ledger.book import FUNDING_ACCOUNT, Transfer, TransferKind

    await gw.state.book.transfer(Transfer("topup-1", FUNDING_ACCOUNT, wallet, parse_usd("0.05"), TransferKind.ADJUSTMENT))
    await asyncio.sleep(1.05)  # the refusal above may have just refreshed the mirror
    reply = await client.chat.completions.create(model="flat-fee", messages=user("x"))
    assert reply.choices[0].message.content
    assert await gw.balance(wallet) == parse_usd("0.04")


async def test_real_cost_above_the_hold_charges_the_balance_and_records_the_shortfall(gw) -> None:
    # The upstream reports far more prompt tokens than the body could hold
    # (a misbehaving provider): the cost exceeds the hold and the balance.
    price = price_of(gw, MINI)
    wallet, key = await gw.funded_key("0.001")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=9000000 FAKE:completion_tokens=1"), max_tokens=1)
    cost = cost_nusd(price, TokenUsage(9_000_000, 1))
    assert raw.headers["x-usage-cost"] == format_usd(cost)
    assert raw.headers["x-usage-shortfall"] == format_usd(cost - parse_usd("0.001"))
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert (usage["charged_nusd"], usage["shortfall_nusd"]) == (parse_usd("0.001"), cost - parse_usd("0.001"))
    assert await gw.balance(wallet) == 0
    totals = await gw.totals()
    assert totals.usage_shortfall_nusd == cost - parse_usd("0.001") and totals.negative_wallets == 0


async def test_an_unexpected_error_after_the_hold_releases_it(gw, monkeypatch) -> None:
    wallet, key = await gw.funded_key("1")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in metering")

    monkeypatch.setattr("gateway.dialects.openai.usage_from_body", broken)
    with pytest.raises(openai.InternalServerError):
        await gw.client(key).chat.completions.create(model=MINI, messages=user("x"))
    holds = await gw.state.holds.wallet(wallet)
    assert (holds.held_nusd, holds.hold_count) == (0, 0)
    assert await gw.balance(wallet) == parse_usd("1")
