"""From a request and its response to token usage and a price.

The upstream's `usage` is authoritative when present (cached prompt tokens at
the cached price). When it is missing, or a stream was cut before it came, the
tokens are counted here: the prompt, plus the completion text already streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.pricing import ModelPrice, TokenUsage, cost_nusd
from gateway import tokens


@dataclass(frozen=True)
class Metered:
    usage: TokenUsage
    source: str  # "upstream" or "tokenizer"
    cost_nusd: int


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


def count_prompt(endpoint: str, payload: dict[str, Any], encoding: str) -> int:
    if endpoint == "chat":
        messages = payload.get("messages")
        return tokens.count_chat_prompt(messages if isinstance(messages, list) else [], encoding)
    field = "prompt" if endpoint == "completion" else "input"
    return tokens.count_prompt_input(payload.get(field), encoding)


def meter(price: ModelPrice, reported: TokenUsage | None, counted: TokenUsage | None) -> Metered:
    if reported is not None:
        return Metered(reported, "upstream", cost_nusd(price, reported))
    assert counted is not None, "either the upstream or the tokenizer must give usage"
    return Metered(counted, "tokenizer", cost_nusd(price, counted))
