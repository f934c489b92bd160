"""Bring your own key through the gateway, on both backends: which key the provider sees, what the wallet pays.

The fake provider records the headers it received (GET /_fake/requests), so
each test checks that the caller's key, not the operator's, went upstream.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import aiohttp
import openai
import pytest

from config.pricing import TokenUsage, cost_nusd
from gateway.money.wallet_owners import WalletOwners
from ledger.api_keys import SpendLimits
from ledger.book import FEES_ACCOUNT
from ledger.bots import Bot
from ledger.money import format_usd, parse_usd
from tests.test_api_permissions import call

MINI = "gpt-4o-mini"
OPERATOR_KEY = "sk-operator-" + "o" * 24
HEADER = "X-Provider-Api-Key"


def new_provider_key(label: str) -> str:
    return f"sk-byok-{label}-{uuid.uuid4().hex}"


def master_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> str:
    key = master_key()
    monkeypatch.setenv("MW_MASTER_KEY", key)
    monkeypatch.delenv("MW_MASTER_KEY_OLD", raising=False)
    return key


async def byok_gateway(gateway_factory, fee_bps: int = 0, **byok: Any):
    return await gateway_factory(provider={"api_key": OPERATOR_KEY}, byok={"fee_bps": fee_bps, **byok})


async def upstream_auth(fake_upstream: str) -> list[str]:
    """The Authorization header of every request the fake provider received, oldest first."""
    async with aiohttp.ClientSession() as http:
        async with http.get(fake_upstream.removesuffix("/v1") + "/_fake/requests") as response:
            return [r["headers"].get("authorization") for r in await response.json()]


async def org(gw, usd: str) -> tuple[str, str, str]:
    """A wallet with `usd`, its owner's management key and an inference key: (wallet, management, inference)."""
    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    gw.wallets.append(wallet_id)
    _, owner, management = await WalletOwners(gw.state.book, gw.state.holds, gw.state.settings.wallet).create_org(
        wallet_id, "Acme", "Olive")
    if parse_usd(usd):
        await gw.ops.credit(wallet_id, parse_usd(usd), memo="test funding")
    key, _ = await gw.ops.create_key(wallet_id, "app", member_id=owner.member_id)
    return wallet_id, management.secret, key.secret


def provider_cost(gw, prompt_tokens: int, completion_tokens: int) -> int:
    return cost_nusd(gw.state.routes[MINI].price, TokenUsage(prompt_tokens, completion_tokens))


async def test_a_header_key_goes_upstream_and_a_free_call_needs_no_balance(gateway_factory, fake_upstream) -> None:
    gw = await byok_gateway(gateway_factory)
    wallet, key = await gw.funded_key("0")
    mine = new_provider_key("header")
    client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=0, default_headers={HEADER: mine})
    raw = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=1000 FAKE:completion_tokens=500"))
    expected = provider_cost(gw, 1000, 500)
    assert (raw.headers["x-usage-cost"], raw.headers["x-provider-cost"]) == ("0", format_usd(expected))
    assert raw.headers["x-meterway-byok"] == "header"
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {mine}"  # the caller's key, not the operator's
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert (usage["cost_nusd"], usage["charged_nusd"], usage["held_nusd"]) == (0, 0, 0)
    assert (usage["byok"], usage["provider_cost_nusd"]) == (True, expected)
    settled = await gw.state.book.usage(raw.headers["x-request-id"])
    assert settled is not None and (settled.record.byok, settled.record.provider_cost_nusd) == (True, expected)
    assert settled.record.prompt_tokens == 1000 and settled.record.completion_tokens == 500  # still metered
    assert await gw.balance(wallet) == 0
    # The same empty wallet without its key: the operator's key, and a balance needed.
    with pytest.raises(openai.APIStatusError) as refused:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"))
    assert refused.value.status_code == 402
    funded, funded_key = await gw.funded_key("1")
    await gw.client(funded_key).chat.completions.create(model=MINI, messages=user("hi"))
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {OPERATOR_KEY}"


async def test_the_fee_is_exactly_its_share_rounded_up_as_its_own_leg(gateway_factory, fake_upstream) -> None:
    gw = await byok_gateway(gateway_factory, fee_bps=500)  # 5%, OpenRouter's
    wallet, key = await gw.funded_key("1")
    revenue_before = (await gw.state.book.totals()).revenue_nusd
    client = gw.client(key)
    charged = 0
    for prompt, completion in ((1000, 500), (1, 1)):  # the second's 5% is 37.5 nUSD: rounded up to 38
        raw = await client.chat.completions.with_raw_response.create(
            model=MINI, messages=user(f"FAKE:prompt_tokens={prompt} FAKE:completion_tokens={completion}"),
            extra_headers={HEADER: new_provider_key("fee")})
        cost = provider_cost(gw, prompt, completion)
        fee = -(-cost * 500 // 10_000)
        assert fee * 10_000 >= cost * 500 > (fee - 1) * 10_000
        assert (raw.headers["x-usage-cost"], raw.headers["x-provider-cost"]) == (format_usd(fee), format_usd(cost))
        request_id = raw.headers["x-request-id"]
        legs = [t.transfer for t in await gw.state.book.transfers_of(FEES_ACCOUNT) if t.transfer.request_id == request_id]
        assert [(leg.debit_account, leg.amount_nusd) for leg in legs] == [(wallet, fee)]
        charged += fee
    assert provider_cost(gw, 1, 1) == 750
    assert await gw.balance(wallet) == parse_usd("1") - charged
    assert (await gw.state.book.totals()).revenue_nusd == revenue_before  # nothing to sys:revenue
    assert (await gw.state.book.wallet(FEES_ACCOUNT)) is None  # sys:fees is an account, never a wallet
    fees = await gw.state.book.transfers_of(FEES_ACCOUNT)
    assert sum(t.transfer.amount_nusd for t in fees) == charged


async def test_with_a_fee_only_the_fee_is_held(gateway_factory) -> None:
    gw = await byok_gateway(gateway_factory, fee_bps=500)
    # $0.0001: less than a 2000-token answer may cost ($0.0012), more than 5% of it.
    _, key = await gw.funded_key("0.0001")
    body = {"model": MINI, "messages": user("hi"), "max_tokens": 2000}
    with pytest.raises(openai.APIStatusError) as plain:
        await gw.client(key).chat.completions.create(**body)
    assert plain.value.status_code == 402 and plain.value.body["code"] == "insufficient_quota"
    reply = await gw.client(key).chat.completions.create(**body, extra_headers={HEADER: new_provider_key("held")})
    assert reply.choices[0].message.content
    _, empty = await gw.funded_key("0")
    with pytest.raises(openai.APIStatusError) as refused:  # a fee needs money: an empty wallet is refused
        await gw.client(empty).chat.completions.create(**body, extra_headers={HEADER: new_provider_key("empty")})
    assert refused.value.status_code == 402


async def test_a_bad_header_key_is_refused_and_the_header_can_be_turned_off(gateway_factory) -> None:
    gw = await byok_gateway(gateway_factory)
    _, key = await gw.funded_key("1")
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    for bad in ("short", "sk-with space-1234567", "x" * 513):
        status, _, answer = await gw.raw_post("/v1/chat/completions", body, key, {HEADER: bad})
        assert status == 400 and answer["error"]["code"] == "invalid_provider_key", answer
        assert answer["error"]["param"] == HEADER and bad not in str(answer)
    off = await byok_gateway(gateway_factory, header_enabled=False)
    _, key = await off.funded_key("1")
    status, _, answer = await off.raw_post("/v1/chat/completions", body, key, {HEADER: new_provider_key("off")})
    assert status == 400 and answer["error"]["code"] == "byok_header_disabled", answer


async def test_a_stream_reports_its_fee_and_provider_cost_in_the_usage_chunk(gateway_factory, fake_upstream) -> None:
    gw = await byok_gateway(gateway_factory, fee_bps=1000)  # 10%
    wallet, key = await gw.funded_key("1")
    mine = new_provider_key("stream")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:prompt_tokens=200 FAKE:completion_tokens=4"), stream=True,
        stream_options={"include_usage": True}, extra_headers={HEADER: mine})
    assert raw.headers["x-meterway-byok"] == "header"
    chunks = [chunk async for chunk in raw.parse()]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello hello hello hello"
    cost = provider_cost(gw, 200, 4)
    fee = -(-cost * 1000 // 10_000)
    extra = chunks[-1].usage.model_extra
    assert parse_usd(str(extra["cost"])) == fee and extra["is_byok"] is True
    assert parse_usd(str(extra["cost_details"]["upstream_inference_cost"])) == cost
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {mine}"
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert (usage["cost_nusd"], usage["charged_nusd"], usage["status"]) == (fee, fee, "ok")
    assert await gw.balance(wallet) == parse_usd("1") - fee
    # A stream with no fee, from an empty wallet: served, free.
    free = await byok_gateway(gateway_factory)
    _, empty = await free.funded_key("0")
    stream = await free.client(empty).chat.completions.create(
        model=MINI, messages=user("FAKE:completion_tokens=3"), stream=True, stream_options={"include_usage": True},
        extra_headers={HEADER: mine})
    last = [chunk async for chunk in stream][-1]
    assert str(last.usage.model_extra["cost"]) == "0" and last.usage.model_extra["is_byok"] is True


async def test_stored_keys_bot_keys_win_and_a_header_wins_over_both(gateway_factory, fake_upstream, master) -> None:
    gw = await byok_gateway(gateway_factory)
    wallet, management, key = await org(gw, "0")
    wallet_key, bot_key, header_key = new_provider_key("wallet"), new_provider_key("bot"), new_provider_key("hdr")
    status, stored = await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": wallet_key})
    assert status == 201, stored
    assert (stored["provider"], stored["bot_id"], stored["last4"]) == ("fake", None, wallet_key[-4:])
    assert wallet_key not in str(stored)
    bot = await gw.state.book.create_bot(Bot(f"bot_{uuid.uuid4().hex[:8]}", wallet, "support", SpendLimits()))
    status, _ = await call(gw, "POST", "/api/provider-keys", management,
                           {"provider": "fake", "api_key": bot_key, "bot_id": bot.bot_id})
    assert status == 201
    bot_inference, _ = await gw.ops.create_key(wallet, "bot", bot_id=bot.bot_id)
    reply = await gw.client(key).chat.completions.with_raw_response.create(model=MINI, messages=user("hi"))
    assert reply.headers["x-meterway-byok"] == "stored" and reply.headers["x-usage-cost"] == "0"
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {wallet_key}"
    await gw.client(bot_inference.secret).chat.completions.create(model=MINI, messages=user("hi"))
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {bot_key}"
    await gw.client(bot_inference.secret).chat.completions.create(model=MINI, messages=user("hi"),
                                                                  extra_headers={HEADER: header_key})
    assert (await upstream_auth(fake_upstream))[-1] == f"Bearer {header_key}"
    status, listed = await call(gw, "GET", "/api/provider-keys", management)
    assert status == 200 and {k["bot_id"] for k in listed["data"]} == {None, bot.bot_id}
    assert wallet_key not in str(listed) and bot_key not in str(listed)
    # Revoked: the wallet's calls go with the operator's key again, and need money again.
    status, _ = await call(gw, "DELETE", f"/api/provider-keys/{stored['id']}", management)
    assert status == 200
    with pytest.raises(openai.APIStatusError) as refused:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"))
    assert refused.value.status_code == 402
    status, answer = await call(gw, "DELETE", f"/api/provider-keys/{stored['id']}", management)
    assert status == 404, answer


async def test_storing_refuses_what_cannot_work_without_echoing_the_key(gateway_factory, master) -> None:
    gw = await byok_gateway(gateway_factory, keys_per_wallet_max=1)
    wallet, management, _ = await org(gw, "0")
    good = new_provider_key("good")
    cases = [({"provider": "openai", "api_key": good}, 400, "unknown_provider"),
             ({"provider": "fake", "api_key": "sk-has a space-0123"}, 400, "invalid_provider_key"),
             ({"provider": "fake", "api_key": "short"}, 400, "invalid_provider_key"),
             ({"provider": "fake", "api_key": good, "bot_id": "bot_nope"}, 400, "unknown_bot"),
             ({"provider": "fake"}, 400, "missing_required_parameter")]
    for body, status_expected, code in cases:
        status, answer = await call(gw, "POST", "/api/provider-keys", management, body)
        assert (status, answer["error"]["code"]) == (status_expected, code), (body, answer)
        assert str(body.get("api_key")) not in str(answer)
    assert (await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": good}))[0] == 201
    bot = await gw.state.book.create_bot(Bot(f"bot_{uuid.uuid4().hex[:8]}", wallet, "support", SpendLimits()))
    status, answer = await call(gw, "POST", "/api/provider-keys", management,
                                {"provider": "fake", "api_key": good, "bot_id": bot.bot_id})
    assert (status, answer["error"]["code"]) == (409, "provider_key_limit"), answer
    # Replacing the wallet's key for the same provider is no second key.
    assert (await call(gw, "POST", "/api/provider-keys", management, {"provider": "fake", "api_key": good}))[0] == 201


async def test_spend_caps_count_the_fee_not_the_provider_cost(gateway_factory) -> None:
    # 5% of a $0.0003096 call is 15,480 nUSD: a key allowed 30,000 nUSD a day makes two such calls, not zero or one.
    gw = await byok_gateway(gateway_factory, fee_bps=500)
    wallet_id, _ = await gw.funded_key("1")
    key, _ = await gw.ops.create_key(wallet_id, "capped", limits=SpendLimits(day_nusd=30_000))
    client = gw.client(key.secret)
    body = {"model": MINI, "messages": user("FAKE:prompt_tokens=2000 FAKE:completion_tokens=16"), "max_tokens": 16,
            "extra_headers": {HEADER: new_provider_key("capped")}}
    fee = -(-provider_cost(gw, 2000, 16) * 500 // 10_000)
    assert fee == 15_480
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(**body)
        assert raw.headers["x-usage-cost"] == format_usd(fee)
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(**body)
    assert refused.value.status_code == 402 and refused.value.body["code"] == "budget_exceeded"
    assert await gw.balance(wallet_id) == parse_usd("1") - 2 * fee
    # With no fee the cap is never touched: the calls are free.
    free = await byok_gateway(gateway_factory)
    wallet_id, _ = await free.funded_key("0")
    key, _ = await free.ops.create_key(wallet_id, "capped", limits=SpendLimits(day_nusd=30_000))
    for _ in range(3):
        await free.client(key.secret).chat.completions.create(**body)
