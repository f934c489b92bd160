"""The fake's request handlers: validation as OpenAI does it, then the directives, then the answer."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

from fakes.openai.bodies import (
    SYSTEM_FINGERPRINT,
    chat_body,
    chat_prompt_tokens,
    chat_usage,
    completion_body,
    content_text,
    count_items,
    embedding_base64,
    embedding_floats,
    embedding_seed,
    encoding,
    first_text,
    prompt_list,
    service_tier,
)
from fakes.openai.directives import Directives, FakeConfig, parse_directives
from fakes.openai.errors import JSON, ApiError, injected_error, invalid, invalid_json, missing, rate_limit_headers
from fakes.openai.streams import chat_frames, completion_frames, drop_connection, send_frames

HANG_SECONDS = 60.0
LEGACY_DEFAULT_MAX_TOKENS = 16  # the real /v1/completions default
MAX_CHOICES = 128
REQUEST_LOG_SIZE = 100
RECORDED_HEADERS = ("authorization", "content-type", "openai-organization", "openai-project")
MODEL_CREATED = 1_700_000_000


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
            raise invalid_json()
        return body

    def _model(self, body: dict[str, Any]) -> str:
        model = body.get("model")
        if not model:
            raise ApiError(400, "you must provide a model parameter")
        if not isinstance(model, str):
            raise invalid("model", "expected a string.", "invalid_type")
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
            raise invalid("n", f"expected an integer from 1 to {MAX_CHOICES}.")
        return n

    @staticmethod
    def _length(d: Directives, body: dict[str, Any], keys: tuple[str, ...], default: int | None) -> tuple[int, str]:
        """Tokens to generate and the finish_reason, honouring max tokens."""
        limit = default
        for key in keys:
            value = body.get(key)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise invalid(key, "expected an integer of at least 1.")
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
            raise invalid("stream_options", "expected an object.", "invalid_type")
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
        return {"x-request-id": self.ids.next("req_"), "openai-processing-ms": "1", **rate_limit_headers()}

    def _error(self, error: ApiError) -> web.Response:
        return error.response(self.ids.next("req_"))

    def _json(self, payload: Any) -> web.Response:
        return web.Response(body=orjson.dumps(payload), content_type=JSON, headers=self._id_header())

    # ---- /v1/chat/completions

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            messages = body.get("messages")
            if messages is None:
                raise missing("messages")
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise invalid("messages", "expected an array of message objects.", "invalid_type")
            if not messages:
                raise invalid("messages", "empty array. Expected an array with minimum length 1.", "empty_array")
            d = parse_directives(content_text(messages[-1].get("content")), self.base)
            n_choices = self._choices(body)
            tokens, finish = self._length(d, body, ("max_completion_tokens", "max_tokens"), None)
            stream, include_usage, obfuscate = self._stream_flags(body)
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None and not stream:
            drop_connection(request)
            return web.Response()
        prompt = d.prompt_tokens if d.prompt_tokens is not None else chat_prompt_tokens(messages)
        usage = chat_usage(prompt, tokens * n_choices, d.cached_tokens)
        head = {
            "id": self.ids.next("chatcmpl-"),
            "object": "chat.completion.chunk" if stream else "chat.completion",
            "created": int(time.time()),
            "model": self.snapshots.get(model, model),
            "service_tier": service_tier(body),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        if not stream:
            return self._json(chat_body(head, n_choices, tokens, finish, None if d.omit_usage else usage))
        frames = list(chat_frames(head, n_choices, tokens, finish, usage, include_usage, d.omit_usage, obfuscate))
        drop_at = None if d.drop_after is None else n_choices * (1 + min(d.drop_after, tokens))
        return await send_frames(request, frames, self._id_header(), d.chunk_delay_ms, drop_at)

    # ---- /v1/completions (legacy)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            if body.get("prompt") is None:
                raise missing("prompt")
            prompts = prompt_list(body["prompt"], "prompt")
            d = parse_directives(first_text(prompts), self.base)
            n_choices = self._choices(body) * len(prompts)
            tokens, finish = self._length(d, body, ("max_tokens",), LEGACY_DEFAULT_MAX_TOKENS)
            stream, include_usage, _ = self._stream_flags(body)
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None and not stream:
            drop_connection(request)
            return web.Response()
        prompt = d.prompt_tokens if d.prompt_tokens is not None else count_items(prompts)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": tokens * n_choices,
            "total_tokens": prompt + tokens * n_choices,
        }
        head = {"id": self.ids.next("cmpl-"), "object": "text_completion", "created": int(time.time()), "model": self.snapshots.get(model, model)}
        echo = self._echo_texts(body, prompts) if body.get("echo") is True else None
        if not stream:
            return self._json(completion_body(head, n_choices, tokens, finish, echo, None if d.omit_usage else usage))
        frames = list(completion_frames(head, n_choices, tokens, finish, echo, usage, include_usage, d.omit_usage))
        drop_at = None if d.drop_after is None else n_choices * ((echo is not None) + min(d.drop_after, tokens))
        return await send_frames(request, frames, self._id_header(), d.chunk_delay_ms, drop_at)

    @staticmethod
    def _echo_texts(body: dict[str, Any], prompts: list[str | list[int]]) -> list[str]:
        """Prompt text per choice for ``echo``: each prompt repeated n times."""
        texts = [p if isinstance(p, str) else encoding().decode(p) for p in prompts]
        n = body.get("n") or 1
        return [text for text in texts for _ in range(n)]

    # ---- /v1/embeddings

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            body = await self._read_body(request)
            model = self._model(body)
            if body.get("input") is None:
                raise missing("input")
            items = prompt_list(body["input"], "input")
            d = parse_directives(first_text(items), self.base)
            dims = self._dimensions(body)
            fmt = body.get("encoding_format") or "float"
            if fmt not in ("float", "base64"):
                raise invalid("encoding_format", "expected 'float' or 'base64'.")
            await self._before_answer(d)
        except ApiError as error:
            return self._error(error)
        if d.drop_after is not None:
            drop_connection(request)
            return web.Response()
        vector = embedding_base64 if fmt == "base64" else embedding_floats
        payload: dict[str, Any] = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": vector(embedding_seed(item), dims)}
                for i, item in enumerate(items)
            ],
            "model": self.snapshots.get(model, model),
        }
        if not d.omit_usage:
            prompt = d.prompt_tokens if d.prompt_tokens is not None else count_items(items)
            payload["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return self._json(payload)

    def _dimensions(self, body: dict[str, Any]) -> int:
        dims = body.get("dimensions")
        if dims is None:
            return self.config.embedding_dims
        if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192:
            raise invalid("dimensions", "expected an integer from 1 to 8192.")
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


