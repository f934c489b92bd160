"""Drop-in compatibility with what the OpenAI SDK reads and sends (issue 6, items 14-15).

The SDK's retry logic reads `retry-after`, `retry-after-ms` and
`x-should-retry`; dashboards read `x-ratelimit-*`. A stream's `X-Model` is the
model that served; `models.retrieve` works; a malformed `stream_options` is a
400 and costs nothing. Both backends, the openai SDK as client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest

from fakes.openai import FakeConfig, start_fake_upstream
from tests.gateway_harness import MODELS

MINI = "gpt-4o-mini"
SNAPSHOT = "gpt-4o-mini-2024-07-18"


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
async def snapshot_upstream() -> AsyncIterator[str]:
    """A fake provider that answers gpt-4o-mini with its dated snapshot, as OpenAI does."""
    runner, base_url = await start_fake_upstream(FakeConfig(models=tuple(MODELS), snapshots=((MINI, SNAPSHOT),)))
    yield base_url
    await runner.cleanup()


async def test_rate_limit_and_request_id_headers_pass_through_on_success(gw) -> None:
    _, key = await gw.funded_key("1")
    raw = await gw.client(key).chat.completions.with_raw_response.create(model=MINI, messages=user("hi"))
    headers = raw.headers
    assert headers["x-ratelimit-limit-requests"] == "10000"
    assert headers["x-ratelimit-remaining-tokens"] == "29999000"
    assert headers["x-ratelimit-reset-requests"] == "6ms"
    assert headers["x-upstream-request-id"].startswith("req_")
    # Our own id stays X-Request-Id: it is the one GET /v1/usage/{id} knows.
    assert headers["x-request-id"] != headers["x-upstream-request-id"]
    assert "x-usage-cost" in headers


async def test_retry_after_and_rate_limits_pass_through_on_429(gw) -> None:
    wallet, key = await gw.funded_key("1")
    before = await gw.balance(wallet)
    with pytest.raises(openai.RateLimitError) as caught:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("FAKE:error=429"))
    headers = caught.value.response.headers
    assert headers["retry-after"] == "1"
    assert headers["retry-after-ms"] == "1000"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-upstream-request-id"].startswith("req_")
    assert headers["x-request-id"].startswith("req_")
    assert await gw.balance(wallet) == before


async def test_retry_after_passes_through_on_streamed_429(gw) -> None:
    _, key = await gw.funded_key("1")
    with pytest.raises(openai.RateLimitError) as caught:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("FAKE:error=429"), stream=True)
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "30000000"


async def test_sdk_retries_a_429_after_retry_after_and_charges_once(gw) -> None:
    """The SDK honours the relayed retry-after: one retry, then the error; nothing charged."""
    wallet, key = await gw.funded_key("1")
    client = openai.AsyncOpenAI(base_url=f"{gw.base_url}/v1", api_key=key, max_retries=1)
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model=MINI, messages=user("FAKE:error=429"))
    assert await gw.balance(wallet) == 1_000_000_000


async def test_x_model_is_the_served_snapshot_for_streams_and_not(gateway_factory, snapshot_upstream) -> None:
    gw = await gateway_factory(snapshot_upstream)
    _, key = await gw.funded_key("1")
    client = gw.client(key)
    raw = await client.chat.completions.with_raw_response.create(model=MINI, messages=user("hi"))
    assert raw.headers["x-model"] == SNAPSHOT
    raw = await client.chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:completion_tokens=3"), stream=True, stream_options={"include_usage": True})
    assert raw.headers["x-model"] == SNAPSHOT
    chunks = [chunk async for chunk in raw.parse()]
    assert chunks[-1].usage is not None and chunks[-1].model == SNAPSHOT
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "hello hello hello"


async def test_stream_cut_before_first_chunk_still_answers_with_headers(gw) -> None:
    wallet, key = await gw.funded_key("1")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user("FAKE:drop_after=0"), stream=True)
    assert raw.headers["x-model"] == MINI
    with pytest.raises(openai.APIError):
        async for _ in raw.parse():
            pass
    await gw.settled_everything()
    assert await gw.balance(wallet) < 1_000_000_000  # the prompt was consumed upstream


async def test_models_retrieve(gw) -> None:
    _, key = await gw.funded_key("0")
    client = gw.client(key)
    model = await client.models.retrieve(MINI)
    assert (model.id, model.object, model.owned_by) == (MINI, "model", "fake")
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        await gw.client("mw-" + "x" * 43).models.retrieve(MINI)


@pytest.mark.parametrize("extra, param", [
    ({"stream": True, "stream_options": "x"}, "stream_options"),
    ({"stream": True, "stream_options": ["include_usage"]}, "stream_options"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"stream": "true"}, "stream"),
])
async def test_malformed_stream_options_are_400_and_free(gw, extra, param) -> None:
    wallet, key = await gw.funded_key("1")
    with pytest.raises(openai.BadRequestError) as caught:
        await gw.client(key).chat.completions.create(model=MINI, messages=user("hi"), extra_body=extra)
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param and error["type"] == "invalid_request_error"
    assert await gw.balance(wallet) == 1_000_000_000
    assert [t.transfer.kind.value for t in await gw.ops.transactions(wallet)] == ["adjustment"]
