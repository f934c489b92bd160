"""A bot's friendly answer in OpenAI's shapes: a chat completion that no provider made.

When a cap or an empty wallet stops a bot that is set to answer kindly, its
end user gets this assistant message instead of a 402 (Aerostack's bots do
the same). It is a valid `chat.completion`, or a stream of
`chat.completion.chunk` events ending in `[DONE]`, with zero usage: nobody is
charged for it. The id says what it is, so operators can tell it apart.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.dialects.sse import data_event

DONE_EVENT = data_event(b"[DONE]")

FRIENDLY_ID_PREFIX = "chatcmpl-refused-"
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def completion_body(request_id: str, model: str, message: str) -> bytes:
    """The non-streamed answer: one choice with the message, finish_reason "stop"."""
    return json.dumps({
        **_head(request_id, model, "chat.completion"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": message, "refusal": None},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": ZERO_USAGE,
    }).encode()


def completion_events(request_id: str, model: str, message: str, include_usage: bool) -> list[bytes]:
    """The streamed answer: role and content, then the stop, then (if asked for) the usage, then [DONE]."""
    head = _head(request_id, model, "chat.completion.chunk")
    usage_field = {"usage": None} if include_usage else {}
    chunks: list[dict[str, Any]] = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": message, "refusal": None},
                              "logprobs": None, "finish_reason": None}], **usage_field},
        {**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], **usage_field},
    ]
    if include_usage:
        chunks.append({**head, "choices": [], "usage": ZERO_USAGE})
    return [data_event(json.dumps(chunk).encode()) for chunk in chunks] + [DONE_EVENT]


def _head(request_id: str, model: str, kind: str) -> dict[str, Any]:
    return {"id": FRIENDLY_ID_PREFIX + request_id, "object": kind, "created": int(time.time()), "model": model,
            "system_fingerprint": None}
