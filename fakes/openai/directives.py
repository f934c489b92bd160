"""How a test steers the fake: ``FakeConfig`` and the per-request ``FAKE:`` directives.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

from fakes.openai.errors import ApiError


@dataclass(frozen=True)
class FakeConfig:
    """What the fake serves (models, key, snapshots) and the directives every request starts from."""

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


