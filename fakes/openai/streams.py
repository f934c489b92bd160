"""Server-sent events of the fake: the frames of chat and legacy completion streams, and sending them."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web

from fakes.openai.bodies import token_piece

SSE_DONE = b"data: [DONE]\n\n"
# Real chunks carry random padding against length side channels; a fixed
# rotation of strings keeps the shape without paying for randomness.
OBFUSCATION = ("Qx7", "kP2vN", "a", "Zr8mW4", "tY", "Lq0sJ3e", "u9", "Hd5c")


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_frames(
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
        return sse(payload)

    def choice(i: int, delta: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    for i in range(n_choices):
        yield chunk(choice(i, {"role": "assistant", "content": "", "refusal": None}))
    for t in range(tokens):
        for i in range(n_choices):
            yield chunk(choice(i, {"content": token_piece(t)}))
    for i in range(n_choices):
        yield chunk(choice(i, {}, finish))
    if include_usage and not omit_usage:
        yield chunk([], usage)
    yield SSE_DONE


def completion_frames(
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
        return sse(payload)

    def choice(i: int, text: str, finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"text": text, "index": i, "logprobs": None, "finish_reason": finish_reason}]

    if echo:
        for i in range(n_choices):
            yield chunk(choice(i, echo[i]))
    for t in range(tokens):
        for i in range(n_choices):
            yield chunk(choice(i, token_piece(t)))
    for i in range(n_choices):
        yield chunk(choice(i, "", finish))
    if include_usage and not omit_usage:
        yield chunk([], usage)
    yield SSE_DONE



def drop_connection(request: web.Request) -> None:
    # close() flushes what was already written, then sends FIN: the
    # client sees a response (or chunked body) that never completes.
    if request.transport is not None:
        request.transport.close()


async def send_frames(
    request: web.Request, frames: list[bytes], headers: dict[str, str], chunk_delay_ms: float, drop_at: int | None
) -> web.StreamResponse:
    """Send SSE ``frames``; with ``drop_at``, cut the connection after that many."""
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    delay = chunk_delay_ms / 1000
    try:
        if not delay and drop_at is None:
            await resp.write_eof(b"".join(frames))  # one syscall for the benchmark path
            return resp
        for i, frame in enumerate(frames if drop_at is None else frames[:drop_at]):
            if i and delay:
                await asyncio.sleep(delay)
            await resp.write(frame)
        if drop_at is not None:
            drop_connection(request)
            return resp
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing left to do
    return resp
