"""From a request and its response to token usage and a price.

The upstream's `usage` is authoritative when present (cached prompt tokens at
the cached price). When it is missing, or a stream was cut before it came, the
tokens are counted here: the prompt, plus the completion text already streamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config.pricing import ModelPrice, TokenUsage, cost_nusd
from gateway import media, tokens
from ledger.money import AMOUNT_NUSD_MAX

# A source ending in this marks usage beyond the sanity bounds (see capped()).
CAPPED_SUFFIX = "_capped"
USAGE_TOKENS_MAX_DEFAULT = 100_000_000


@dataclass(frozen=True)
class Metered:
    usage: TokenUsage
    source: str  # "upstream" or "tokenizer", with CAPPED_SUFFIX when capped
    cost_nusd: int
    # The counts as given, when they were beyond the bounds and usage holds the capped ones.
    capped_from: TokenUsage | None = None


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


def count_prompt(endpoint: str, payload: dict[str, Any], encoding: tokens.EncodingChoice | str,
                 rates: media.MediaRates = media.DEFAULT_RATES) -> int:
    """Every input the provider bills: text, tool definitions, tool calls, schemas, images, audio."""
    choice = encoding if isinstance(encoding, tokens.EncodingChoice) else tokens.EncodingChoice(encoding, True)
    counter = tokens.PromptCounter(choice, rates)
    count_into(endpoint, payload, counter)
    return counter.total


def count_into(endpoint: str, payload: dict[str, Any], counter: tokens.PromptCounter) -> None:
    if endpoint == "chat":
        tokens.count_chat(payload, counter)
    else:
        tokens.count_prompt_input(payload.get("prompt" if endpoint == "completion" else "input"), counter)


def meter(price: ModelPrice, reported: TokenUsage | None, counted: TokenUsage | None,
          tokens_max: int = USAGE_TOKENS_MAX_DEFAULT) -> Metered:
    if reported is not None:
        return capped(price, reported, "upstream", tokens_max)
    assert counted is not None, "either the upstream or the tokenizer must give usage"
    return capped(price, counted, "tokenizer", tokens_max)


def capped(price: ModelPrice, usage: TokenUsage, source: str, tokens_max: int) -> Metered:
    """Usage priced, within what a request can be and the ledger can hold.

    An upstream that reports absurd usage (say 10^14 tokens) is still served
    and recorded, never a 500: each count is capped at tokens_max
    (limits.usage_tokens_max) and the cost at AMOUNT_NUSD_MAX, and the row is
    flagged by its usage_source ("upstream_capped"). The wallet then pays what
    it can, and the rest is a shortfall, as for any cost above the balance.
    """
    if max(usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) <= tokens_max:
        cost = cost_nusd(price, usage)  # the usual case: no copy, no comparison of copies
        if cost <= AMOUNT_NUSD_MAX:
            return Metered(usage, source, cost)
    bounded = TokenUsage(
        prompt_tokens=min(usage.prompt_tokens, tokens_max),
        completion_tokens=min(usage.completion_tokens, tokens_max),
        cached_tokens=min(usage.cached_tokens, tokens_max),
    )
    cost = cost_nusd(price, bounded)
    if bounded == usage and cost <= AMOUNT_NUSD_MAX:
        return Metered(usage, source, cost)
    return Metered(bounded, source + CAPPED_SUFFIX, min(cost, AMOUNT_NUSD_MAX), capped_from=usage)


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
