"""A request's cost: the most it can cost before it is forwarded, what it cost after.

Before: the worst case that is held (see Estimate). Prompt tokens have a free
upper bound: a byte-level BPE token covers at least one byte of UTF-8 text,
and the JSON body holds every byte of the prompt's text (tool definitions,
tool calls and schemas included) plus its framing, so len(body) >= text tokens.
Input that is not text in the body is added at its most: each image at its
model's image_tokens_max, each audio clip at its duration bound from its byte
size, each file at the model's file_tokens_max (see media.py). Output is
bounded by the request's own limits. A dialect (gateway/dialects/) reads those
inputs from its protocol's request. Only when that bound is too coarse for the
wallet is the prompt tokenized, at most limits.tokenize_bytes_max bytes of it
(tight_prompt_tokens); either way the estimate stays an upper bound.

After: the upstream's usage is authoritative when present (cached prompt
tokens at the cached price). When it is missing, or a stream was cut before it
came, the tokens are counted: the prompt, plus the completion text relayed.
This module knows no wire protocol.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from config.pricing import ModelPrice, TokenUsage, cost_nusd
from config.settings import ModelConfig
from gateway.metering import media, tokens
from ledger.money import AMOUNT_NUSD_MAX

# A source ending in this marks usage beyond the sanity bounds (see capped()).
CAPPED_SUFFIX = "_capped"
USAGE_TOKENS_MAX_DEFAULT = 100_000_000


@dataclass(frozen=True)
class Estimate:
    """What a request may cost, known before it is forwarded."""

    most_nusd: int  # from the body's size and media at their most: free to compute
    # The least it can cost (output, per call, images at their base): asked only of a refusal.
    least: Callable[[], int]
    # A tighter worst case, by tokenizing (CPU-bound: call it off the event loop).
    tighten: Callable[[], int]

    def __post_init__(self) -> None:
        assert self.most_nusd >= 0, self


@dataclass(frozen=True)
class Metered:
    usage: TokenUsage
    source: str  # "upstream" or "tokenizer", with CAPPED_SUFFIX when capped
    cost_nusd: int
    # The counts as given, when they were beyond the bounds and usage holds the capped ones.
    capped_from: TokenUsage | None = None


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


def worst_case_nusd(price: ModelPrice, prompt_tokens_max: int, output_max: int) -> int:
    # Cached tokens are never dearer than fresh ones in any price list we know;
    # take the larger price anyway so the bound holds for any configuration.
    per_prompt = max(price.input_per_1m_nusd, price.cached_input_per_1m_nusd)
    bound = ModelPrice(per_prompt, per_prompt, price.output_per_1m_nusd, price.per_call_nusd)
    return cost_nusd(bound, TokenUsage(prompt_tokens=prompt_tokens_max, completion_tokens=output_max))


@functools.lru_cache(maxsize=1024)
def rates_of(model_name: str, model: ModelConfig) -> media.MediaRates:
    return media.rates_for(model_name, model.image_base_tokens, model.image_tile_tokens, model.image_tokens_max,
                           model.audio_tokens_per_second, model.audio_bytes_per_second_min, model.file_tokens_max)


def tight_prompt_tokens(counter: tokens.PromptCounter, body_bytes: int) -> int:
    """An upper bound of the prompt's tokens from a counter a dialect filled with a byte budget."""
    counted = counter.tokenized  # every model's own encoding: exact (tokens.py)
    # The text (framing included) is in the body; images and audio need not be.
    return min(counted + counter.bounded, body_bytes) + counter.media
