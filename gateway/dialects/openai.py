"""OpenAI's wire protocol: chat completions, completions and embeddings.

A dialect owns everything that depends on the protocol: validating a request
as OpenAI validates it, the inputs to its worst-case estimate
(openai_prompt.py), the usage in a body and in a stream, the stream's events,
and the shape of an error. Above the dialects, nothing knows a protocol.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from config.pricing import ModelPrice, TokenUsage
from config.settings import ModelConfig
from gateway.dialects import openai_prompt, sse
from gateway.errors import ApiError, invalid_request
from gateway.metering import media, tokens
from gateway.metering.metering import Estimate, worst_case_nusd

ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completion", "/v1/embeddings": "embedding"}
UPSTREAM_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}
REQUIRED_INPUT = {"chat": "messages", "completion": "prompt", "embedding": "input"}
DONE_EVENT = b"data: [DONE]\n\n"
COST_PLACEHOLDER = "__meterway_cost__"
PROVIDER_COST_PLACEHOLDER = "__meterway_provider_cost__"

# Upstream headers a client's SDK reads (the OpenAI SDK's retry logic reads
# retry-after, retry-after-ms and x-should-retry; dashboards read the rate
# limits), relayed as they are. Named one by one: a lookup each is cheaper on
# the hot path than scanning every upstream header. The upstream's x-request-id
# is relayed as X-Upstream-Request-Id: X-Request-Id names our own request.
RELAYED_HEADERS = (
    "retry-after", "retry-after-ms", "x-should-retry", "openai-processing-ms",
    *(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset") for unit in ("requests", "tokens")),
)
UPSTREAM_REQUEST_ID = "x-request-id"


@dataclass(frozen=True)
class Request:
    """A request that is valid in OpenAI's terms."""

    endpoint: str  # "chat", "completion" or "embedding"
    payload: dict[str, Any]
    stream: bool
    client_wants_usage: bool  # stream_options.include_usage was asked for
    output_tokens_max: int


# --- requests -------------------------------------------------------------------


def parse_body(body: bytes) -> dict[str, Any] | ApiError:
    if not body:
        return invalid_request("We could not parse the JSON body of your request: the body is empty.")
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)"
        )
    if not isinstance(payload, dict):
        return invalid_request("The JSON body of your request must be an object.")
    return payload


def model_name(payload: dict[str, Any]) -> str | ApiError:
    name = payload.get("model")
    if not isinstance(name, str) or not name:
        return invalid_request("you must provide a model parameter", "model", "missing_required_parameter")
    return name


def validate(endpoint: str, payload: dict[str, Any], model: ModelConfig) -> Request | ApiError:
    required = REQUIRED_INPUT[endpoint]
    if payload.get(required) in (None, "", []):
        return invalid_request(f"Missing required parameter: '{required}'.", required, "missing_required_parameter")
    flags = _stream_flags(payload, endpoint)
    if isinstance(flags, ApiError):
        return flags
    output_max = openai_prompt.output_tokens_max(endpoint, payload, model)
    if isinstance(output_max, ApiError):
        return output_max
    return Request(endpoint, payload, flags[0], flags[1], output_max)


def _stream_flags(payload: dict[str, Any], endpoint: str) -> tuple[bool, bool] | ApiError:
    """(stream, the client wants the usage chunk), validated as OpenAI validates them."""
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return invalid_request("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    options = payload.get("stream_options")
    if options is None:
        return stream is True and endpoint != "embedding", False
    if stream is not True:
        return invalid_request("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                               "stream_options", "invalid_value")
    if not isinstance(options, dict):
        return invalid_request("Invalid type for 'stream_options': expected an object.", "stream_options", "invalid_type")
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        return invalid_request("Invalid type for 'stream_options.include_usage': expected a boolean.",
                               "stream_options.include_usage", "invalid_type")
    streams = endpoint != "embedding"
    return streams, streams and include_usage is True


def estimate(request: Request, body_bytes: int, price: ModelPrice, encoding: tokens.EncodingChoice,
             rates: media.MediaRates, tokenize_bytes_max: int) -> Estimate:
    """The worst case from the body's size (free); tokenizing is left to tighten(), if needed."""
    bound = openai_prompt.media_bound(request.endpoint, request.payload, rates)
    most = worst_case_nusd(price, body_bytes + bound.most, request.output_tokens_max)
    least = functools.partial(worst_case_nusd, price, bound.least, request.output_tokens_max)
    tighten = functools.partial(_tight_nusd, request, body_bytes, price, encoding, rates, tokenize_bytes_max)
    return Estimate(most, least, tighten)


def _tight_nusd(request: Request, body_bytes: int, price: ModelPrice, encoding: tokens.EncodingChoice,
                rates: media.MediaRates, tokenize_bytes_max: int) -> int:
    prompt_max = openai_prompt.tight_prompt_tokens(request.endpoint, request.payload, encoding, rates, body_bytes,
                                                   tokenize_bytes_max)
    return worst_case_nusd(price, prompt_max, request.output_tokens_max)


def body_for_stream(request: Request, body: bytes) -> bytes:
    """The body sent upstream for a stream: with include_usage, so the stream ends with its usage."""
    if request.client_wants_usage:
        return body
    options = request.payload.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return orjson.dumps({**request.payload, "stream_options": options})


# --- answers ----------------------------------------------------------------------


def loads_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def usage_from_body(usage: Any) -> TokenUsage | None:
    """OpenAI's usage object (chat, completions, embeddings) -> TokenUsage."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens", 0) or 0
    if not isinstance(prompt, int) or not isinstance(completion, int) or prompt < 0 or completion < 0:
        return None
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    cached = cached if isinstance(cached, int) and 0 <= cached <= prompt else 0
    return TokenUsage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)


def served_model(data: dict[str, Any] | None) -> str | None:
    served = data.get("model") if data else None
    return served if isinstance(served, str) else None


def counted_usage(request: Request, encoding: tokens.EncodingChoice, rates: media.MediaRates,
                  completion: dict[str, Any] | str | None) -> TokenUsage:
    """Usage counted by us (no usage from the upstream): the prompt, plus what was written.

    `completion` is a whole answer's body, or the text a stream relayed.
    CPU-bound: call it off the event loop.
    """
    prompt = openai_prompt.count_prompt(request.endpoint, request.payload, encoding, rates)
    if isinstance(completion, str):
        texts = [completion]
    elif completion and request.endpoint != "embedding":
        texts = completion_texts(completion.get("choices"), "message")
    else:
        texts = []
    return TokenUsage(prompt, sum(tokens.count_text(text, encoding.name) for text in texts))


def completion_texts(choices: Any, part: str) -> list[str]:
    """The text a completion wrote, to count when the upstream reports no usage.

    `part` is "message" (a whole answer) or "delta" (a stream chunk): a delta
    carries the same fields as a message. Content, refusals and tool calls
    (names and arguments, legacy function_call too) all count; so does a
    legacy completion's `text`.
    """
    texts: list[str] = []
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        message = choice.get(part)
        if isinstance(message, dict):
            texts.extend(_message_texts(message))
        if isinstance(choice.get("text"), str):
            texts.append(choice["text"])
    return [text for text in texts if text]


def _message_texts(message: dict[str, Any]) -> list[str]:
    texts = [message[field] for field in ("content", "refusal") if isinstance(message.get(field), str)]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else []:
        texts.extend(_function_texts(call.get("function") if isinstance(call, dict) else None))
    texts.extend(_function_texts(message.get("function_call")))
    return texts


def _function_texts(function: Any) -> list[str]:
    if not isinstance(function, dict):
        return []
    return [function[field] for field in ("name", "arguments") if isinstance(function.get(field), str)]


def relayed_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    relayed = {name: value for name in RELAYED_HEADERS if (value := upstream.get(name)) is not None}
    upstream_id = upstream.get(UPSTREAM_REQUEST_ID)
    if upstream_id is not None:
        relayed["X-Upstream-Request-Id"] = upstream_id
    return relayed


def error_body(error: ApiError) -> bytes:
    return orjson.dumps({"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}})


# --- streams ------------------------------------------------------------------------


class EventKind(enum.Enum):
    FORWARD = "forward"  # an ordinary chunk: relay it now
    USAGE = "usage"  # the usage-only chunk: hold it until settled
    DONE = "done"  # data: [DONE]: the upstream finished cleanly


class StreamTracker:
    """Reads each event once: what kind it is, the usage if any, the text relayed."""

    def __init__(self) -> None:
        self.usage_event: dict[str, Any] | None = None
        self.reported: TokenUsage | None = None
        self.served_model: str | None = None
        self.done = False
        self._pending_text: list[str] = []
        self.relayed_text: list[str] = []

    def observe(self, event: bytes) -> EventKind:
        data = sse.data_of(event)
        if data is None:
            return EventKind.FORWARD
        if data == b"[DONE]":
            self.done = True
            return EventKind.DONE
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return EventKind.FORWARD
        if not isinstance(chunk, dict):
            return EventKind.FORWARD
        if self.served_model is None and isinstance(chunk.get("model"), str):
            self.served_model = chunk["model"]
        usage = usage_from_body(chunk.get("usage"))
        if usage is not None:
            self.reported = usage
        choices = chunk.get("choices")
        if usage is not None and not choices:
            self.usage_event = chunk
            return EventKind.USAGE
        self._pending_text = completion_texts(choices, "delta")
        return EventKind.FORWARD

    def relayed(self) -> None:
        """The last FORWARD event reached the client: its text now counts as consumed."""
        self.relayed_text.extend(self._pending_text)
        self._pending_text = []

    @property
    def finished(self) -> bool:
        """The upstream ended the stream as it should: [DONE], or at least its usage."""
        return self.done or self.reported is not None


def stream_end(tracker: StreamTracker, client_wants_usage: bool, cost_usd: str | None, cut_short: bool,
               byok_provider_cost_usd: str | None = None) -> bytes:
    """What closes a relayed stream: an error event if it was cut, the usage chunk if asked, [DONE]."""
    end = b""
    if cut_short:
        error = ApiError(502, "The upstream stream ended early; you were charged only for what was relayed.",
                         "server_error", "upstream_stream_interrupted")
        end += sse.data_event(error_body(error))
    elif client_wants_usage and tracker.usage_event is not None:
        end += sse.data_event(usage_event_with_cost(tracker.usage_event, cost_usd, byok_provider_cost_usd))
    if tracker.done:
        end += DONE_EVENT
    return end


def usage_event_with_cost(event: dict[str, Any], cost_usd: str | None, byok_provider_cost_usd: str | None = None) -> bytes:
    """The usage chunk with usage.cost in USD, as OpenRouter reports it.

    The cost is written as an exact decimal literal, never through a float. A
    BYOK call's chunk also says so as OpenRouter does: usage.is_byok, and the
    provider cost as usage.cost_details.upstream_inference_cost (cost is the fee).
    """
    if cost_usd is None:
        return orjson.dumps(event)
    usage = {**event["usage"], "cost": COST_PLACEHOLDER}
    if byok_provider_cost_usd is not None:
        usage["is_byok"] = True
        usage["cost_details"] = {**(usage.get("cost_details") or {}), "upstream_inference_cost": PROVIDER_COST_PLACEHOLDER}
    encoded = orjson.dumps({**event, "usage": usage}).replace(f'"{COST_PLACEHOLDER}"'.encode(), cost_usd.encode(), 1)
    if byok_provider_cost_usd is None:
        return encoded
    return encoded.replace(f'"{PROVIDER_COST_PLACEHOLDER}"'.encode(), byok_provider_cost_usd.encode(), 1)
