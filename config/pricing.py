"""What a call costs, in integer nano-USD.

Prices are kept per million tokens in nUSD, so any price with up to nine
decimals of USD per million tokens is exact. The cost of one call is summed
in those units and divided by a million once, rounding up: the gateway never
under-charges by a rounding error, and over-charges by at most 1 nUSD.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS_PER_PRICE_UNIT = 1_000_000


@dataclass(frozen=True)
class ModelPrice:
    input_per_1m_nusd: int
    cached_input_per_1m_nusd: int
    output_per_1m_nusd: int
    per_call_nusd: int = 0

    def __post_init__(self) -> None:
        for value in (self.input_per_1m_nusd, self.cached_input_per_1m_nusd, self.output_per_1m_nusd, self.per_call_nusd):
            assert isinstance(value, int) and value >= 0, value


@dataclass(frozen=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # the part of prompt_tokens served from the provider's cache

    def __post_init__(self) -> None:
        assert self.prompt_tokens >= 0 and self.completion_tokens >= 0, self
        assert 0 <= self.cached_tokens <= self.prompt_tokens, self

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def cost_nusd(price: ModelPrice, usage: TokenUsage) -> int:
    uncached = usage.prompt_tokens - usage.cached_tokens
    scaled = (
        uncached * price.input_per_1m_nusd
        + usage.cached_tokens * price.cached_input_per_1m_nusd
        + usage.completion_tokens * price.output_per_1m_nusd
    )
    cost = -(-scaled // TOKENS_PER_PRICE_UNIT) + price.per_call_nusd
    assert cost >= 0
    return cost
