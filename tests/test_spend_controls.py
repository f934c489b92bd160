"""Spend controls through the gateway: a bot's caps (day, month, conversation), a key's own limits, friendly answers.

Each runs embedded and in production (Postgres and Redis) through the openai
SDK; the caps are held with the wallet in one step, so nothing here is ever
charged past a cap.
"""

from __future__ import annotations

import uuid

import openai
import pytest

from gateway.dialects.openai_friendly import FRIENDLY_ID_PREFIX
from ledger.api_keys import SpendLimits
from ledger.bots import Bot
from ledger.money import parse_usd
from tests.test_multiprocess import FLAT_FEE_NUSD

HI = [{"role": "user", "content": "hi"}]
SORRY = "Our assistant has reached its budget for today. Please try again tomorrow."


async def bot_key(gw, usd: str, caps: SpendLimits, friendly: str | None = None,
                  limits: SpendLimits | None = None) -> tuple[str, str, str]:
    """A funded wallet, a bot with these caps, and a key of that bot: (wallet id, bot id, secret)."""
    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    await gw.ops.create_wallet(wallet_id)
    gw.wallets.append(wallet_id)
    if parse_usd(usd):
        await gw.ops.credit(wallet_id, parse_usd(usd), memo="test funding")
    bot = await gw.state.book.create_bot(Bot(f"bot_{uuid.uuid4().hex[:8]}", wallet_id, "support", caps, friendly))
    new, record = await gw.ops.create_key(wallet_id, "bot key", bot_id=bot.bot_id, limits=limits)
    assert record.bot == "support"  # the key is labelled with its bot's name
    return wallet_id, bot.bot_id, new.secret


async def flat(client: openai.AsyncOpenAI, conversation: str | None = None) -> openai.types.chat.ChatCompletion:
    headers = {"X-Conversation-Id": conversation} if conversation else None
    return await client.chat.completions.create(model="flat-fee", messages=HI, extra_headers=headers)


async def refused(client: openai.AsyncOpenAI, conversation: str | None = None) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        await flat(client, conversation)
    error = caught.value
    assert error.status_code == 402 and error.code == "budget_exceeded", error
    assert error.response.headers["x-should-retry"] == "false"
    return error


async def test_a_conversation_cap_is_kept_per_conversation(gw) -> None:
    wallet_id, _, secret = await bot_key(gw, "1", SpendLimits(conversation_nusd=2 * FLAT_FEE_NUSD))
    client = gw.client(secret)
    for _ in range(2):
        await flat(client, "conv-a")
    error = await refused(client, "conv-a")
    assert "per-conversation" in error.message and "in this conversation" in error.message
    assert "does not reset" in error.message
    await flat(client, "conv-b")  # another conversation has its own cap
    await flat(client)  # no conversation named: no conversation cap
    await gw.settled_everything()
    assert await gw.balance(wallet_id) == parse_usd("1") - 4 * FLAT_FEE_NUSD


async def test_a_bad_conversation_id_is_a_400_and_costs_nothing(gw) -> None:
    wallet_id, _, secret = await bot_key(gw, "1", SpendLimits(conversation_nusd=FLAT_FEE_NUSD))
    for bad in ("x" * 129, "caf\u00e9"):
        status, _, body = await gw.raw_post("/v1/chat/completions", b'{"model": "flat-fee", "messages": [{"role": "user", "content": "hi"}]}', secret,
                                            {"X-Conversation-Id": bad.encode().decode("latin-1")})
        assert status == 400 and body["error"]["param"] == "X-Conversation-Id", body
    assert await gw.balance(wallet_id) == parse_usd("1")


async def test_a_bots_daily_cap_and_a_keys_own_limits(gw) -> None:
    _, _, secret = await bot_key(gw, "1", SpendLimits(day_nusd=3 * FLAT_FEE_NUSD),
                                 limits=SpendLimits(total_nusd=5 * FLAT_FEE_NUSD))
    client = gw.client(secret)
    for _ in range(3):
        await flat(client)
    error = await refused(client)
    assert "bot's daily spending cap" in error.message and "today (UTC)" in error.message
    assert "resets at" in error.message and "T00:00:00" in error.message
    _, _, lifetime_secret = await bot_key(gw, "1", SpendLimits(), limits=SpendLimits(total_nusd=2 * FLAT_FEE_NUSD))
    lifetime = gw.client(lifetime_secret)
    for _ in range(2):
        await flat(lifetime)
    error = await refused(lifetime)
    assert "key's lifetime spending limit" in error.message and "does not reset" in error.message


@pytest.mark.parametrize("stream", [False, True])
async def test_a_friendly_bot_answers_instead_of_refusing_and_charges_nothing(gw, stream: bool) -> None:
    wallet_id, _, secret = await bot_key(gw, "1", SpendLimits(day_nusd=0), SORRY)
    client = gw.client(secret)
    if stream:
        chunks = [c async for c in await client.chat.completions.create(
            model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True})]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0
        request_id = chunks[0].id.removeprefix(FRIENDLY_ID_PREFIX)
    else:
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI)
        completion = raw.parse()
        text = completion.choices[0].message.content or ""
        assert completion.choices[0].finish_reason == "stop" and completion.usage.total_tokens == 0
        assert raw.headers["x-usage-cost"] == "0" and raw.headers["x-meterway-refused"] == "budget_exceeded"
        request_id = raw.headers["x-request-id"]
    assert text == SORRY
    await gw.settled_everything()
    assert await gw.balance(wallet_id) == parse_usd("1")  # nothing charged
    usage = await gw.usage(request_id, secret)
    assert usage["status"] == "refused" and usage["cost_nusd"] == 0 and usage["charged_nusd"] == 0


async def test_a_friendly_bot_answers_an_empty_wallet_too(gw) -> None:
    wallet_id, _, secret = await bot_key(gw, "0", SpendLimits(), SORRY)
    completion = await gw.client(secret).chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert completion.choices[0].message.content == SORRY
    assert await gw.balance(wallet_id) == 0


async def test_an_embedding_of_a_friendly_bot_is_still_refused(gw) -> None:
    """A friendly answer is a chat message: other endpoints get the 402."""
    _, _, secret = await bot_key(gw, "0", SpendLimits(), SORRY)
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client(secret).embeddings.create(model="text-embedding-3-small", input="hi")
    assert caught.value.status_code == 402 and caught.value.code == "insufficient_quota"


async def test_an_empty_wallet_is_told_how_to_top_up(gw) -> None:
    _, secret = await gw.funded_key("0")
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client(secret).chat.completions.create(model="flat-fee", messages=HI)
    error = caught.value
    assert error.status_code == 402 and error.code == "insufficient_quota"
    assert "the wallet is empty" in error.message and "/api/wallet/deposits" in error.message
    _, poor = await gw.funded_key("0.001")
    with pytest.raises(openai.APIStatusError) as caught:
        await gw.client(poor).chat.completions.create(model="flat-fee", messages=HI)
    assert "may cost up to $0.01 and $0.001 is available" in caught.value.message
    assert "or lower max_tokens" in caught.value.message


async def test_a_requests_conversation_is_kept_on_its_usage_row(gw) -> None:
    _, _, secret = await bot_key(gw, "1", SpendLimits(conversation_nusd=FLAT_FEE_NUSD * 5))
    raw = await gw.client(secret).chat.completions.with_raw_response.create(
        model="flat-fee", messages=HI, extra_headers={"X-Conversation-Id": "ticket-4812"})
    await gw.settled_everything()
    settled = await gw.state.book.usage(raw.headers["x-request-id"])
    assert settled is not None and settled.record.conversation_id == "ticket-4812"
