"""OpenAI's requests as the worst-case estimate and the tokenizer see them.

What a chat, completion or embedding request bills as input (messages, tool
definitions, tool calls, schemas, images, audio, files) and the most it can
write: the dialect's inputs to the estimate in gateway/metering/metering.py.
The walk feeds a protocol-free PromptCounter (gateway/metering/tokens.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from config.settings import ModelConfig
from gateway.errors import ApiError, invalid_request
from gateway.metering import media, metering
from gateway.metering.tokens import EncodingChoice, PromptCounter, utf8_bytes

CHOICES_MAX = 128
# OpenAI's chat accounting (the cookbook "How to count tokens with tiktoken"):
# a few tokens of framing per message, per name and per reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_REPLY = 3
# ... and of tool definitions: per function, per property list, per property,
# per enum list and item, and once after all functions.
FUNCTION_INIT, FUNCTION_INIT_O200K = 10, 7
PROPERTIES_INIT, PROPERTY_KEY, ENUM_INIT, ENUM_ITEM, FUNCTIONS_END = 3, 3, -3, 3, 12


def _positive_int(payload: dict[str, Any], name: str, maximum: int | None = None) -> int | None | ApiError:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return invalid_request(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < 1:
        return invalid_request(f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.", name, "integer_below_min_value")
    if maximum is not None and value > maximum:
        return invalid_request(f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.", name, "integer_above_max_value")
    return value


def output_tokens_max(endpoint: str, payload: dict[str, Any], model: ModelConfig) -> int | ApiError:
    if endpoint == "embedding":
        return 0
    limits = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = _positive_int(payload, name)
        if isinstance(value, ApiError):
            return value
        if value is not None:
            limits.append(value)
    choices = _positive_int(payload, "n", CHOICES_MAX)
    if isinstance(choices, ApiError):
        return choices
    # best_of (completions) generates that many candidates server-side, each billed.
    best_of = _positive_int(payload, "best_of", CHOICES_MAX)
    if isinstance(best_of, ApiError):
        return best_of
    if best_of is not None and best_of < (choices or 1):
        return invalid_request("best_of must be greater than or equal to n.", "best_of", "invalid_value")
    per_choice = min([model.max_output_tokens, *limits])
    return per_choice * max(choices or 1, best_of or 1) + _prediction_bytes(payload.get("prediction"))


def _prediction_bytes(prediction: Any) -> int:
    """A bound on predicted-output tokens (the rejected ones are billed as output): their bytes."""
    if not isinstance(prediction, dict):
        return 0
    content = prediction.get("content")
    if isinstance(content, str):
        return utf8_bytes(content)
    if isinstance(content, list):
        return sum(utf8_bytes(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


@dataclass(frozen=True)
class MediaBound:
    most: int  # prompt tokens images and audio can cost at most
    least: int  # ... and at the least (images at their base)


NO_MEDIA = MediaBound(0, 0)


def media_bound(endpoint: str, payload: dict[str, Any], rates: media.MediaRates) -> MediaBound:
    """Images and audio of a chat request, from their parts alone: no decoding, no tokenizing."""
    messages = payload.get("messages") if endpoint == "chat" else None
    if not isinstance(messages, list):
        return NO_MEDIA
    most = least = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue  # the common case: text content, nothing to add
        for part in content:
            kind = media_part(part) if isinstance(part, dict) else None
            if kind == "image_url":
                image = part.get("image_url")
                low = isinstance(image, dict) and image.get("detail") == "low"
                most += rates.image_base_tokens if low else rates.image_tokens_max
                least += rates.image_base_tokens
            elif kind == "input_audio":
                audio = part.get("input_audio")
                most += media.audio_tokens_bound(audio.get("data") if isinstance(audio, dict) else None, rates)
            elif kind == "file":
                most += rates.file_tokens_max
    return MediaBound(most, least)


def count_into(endpoint: str, payload: dict[str, Any], counter: PromptCounter) -> None:
    """Every input the provider bills: text, tool definitions, tool calls, schemas, images, audio."""
    if endpoint == "chat":
        count_chat(payload, counter)
    else:
        count_prompt_input(payload.get("prompt" if endpoint == "completion" else "input"), counter)


def tight_prompt_tokens(endpoint: str, payload: dict[str, Any], encoding: EncodingChoice, rates: media.MediaRates,
                        body_bytes: int, budget_bytes: int | None) -> int:
    """An upper bound of the prompt's tokens, tokenizing at most budget_bytes of its text."""
    counter = PromptCounter(encoding, rates, budget_bytes)
    count_into(endpoint, payload, counter)
    return metering.tight_prompt_tokens(counter, body_bytes)


def count_prompt(endpoint: str, payload: dict[str, Any], encoding: EncodingChoice | str,
                 rates: media.MediaRates = media.DEFAULT_RATES) -> int:
    choice = encoding if isinstance(encoding, EncodingChoice) else EncodingChoice(encoding)
    counter = PromptCounter(choice, rates)
    count_into(endpoint, payload, counter)
    return counter.total


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
    counter = PromptCounter(EncodingChoice(encoding))
    count_messages(messages, counter)
    return counter.total
