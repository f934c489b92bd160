"""The worst-case cost of a request, held before it is forwarded.

Prompt tokens have a free upper bound: a byte-level BPE token covers at least
one byte of UTF-8 text, and the JSON body holds every byte of the prompt plus
its framing, so len(body) >= prompt tokens. Only when that bound is too coarse
for the wallet do we pay for tokenizing (tight_prompt_tokens). Output is bounded
by max_completion_tokens / max_tokens (capped at the model's own limit) times n.
"""

from __future__ import annotations

from typing import Any

from config.pricing import ModelPrice, TokenUsage, cost_nusd
from config.settings import ModelConfig
from gateway import tokens
from gateway.errors import ApiError, invalid_request
from gateway.metering import count_prompt

CHOICES_MAX = 128
# o200k models are counted with cl100k (see gateway/tokens.py): a margin keeps
# the tight estimate an over-estimate.
APPROXIMATE_MARGIN_NUMERATOR, APPROXIMATE_MARGIN_DENOMINATOR, APPROXIMATE_MARGIN_TOKENS = 5, 4, 16


def _positive_int(payload: dict[str, Any], name: str, maximum: int | None = None) -> int | None | ApiError:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        return invalid_request(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < 1:
        return invalid_request(f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead.", name, "integer_below_min_value")
    if maximum is not None and value > maximum:
        return invalid_request(f"Invalid '{name}': integer above maximum value. Expected a value <= {maximum}, but got {value} instead.", name, "integer_above_max_value")
    return value


def output_tokens_max(endpoint: str, payload: dict[str, Any], model: ModelConfig) -> int | ApiError:
    if endpoint == "embedding":
        return 0
    limits = []
    for name in ("max_completion_tokens", "max_tokens"):
        value = _positive_int(payload, name)
        if isinstance(value, ApiError):
            return value
        if value is not None:
            limits.append(value)
    choices = _positive_int(payload, "n", CHOICES_MAX)
    if isinstance(choices, ApiError):
        return choices
    per_choice = min([model.max_output_tokens, *limits])
    return per_choice * (choices or 1)


def worst_case_nusd(price: ModelPrice, prompt_tokens_max: int, output_max: int) -> int:
    # Cached tokens are never dearer than fresh ones in any price list we know;
    # take the larger price anyway so the bound holds for any configuration.
    per_prompt = max(price.input_per_1m_nusd, price.cached_input_per_1m_nusd)
    bound = ModelPrice(per_prompt, per_prompt, price.output_per_1m_nusd, price.per_call_nusd)
    return cost_nusd(bound, TokenUsage(prompt_tokens=prompt_tokens_max, completion_tokens=output_max))


def tight_prompt_tokens(endpoint: str, payload: dict[str, Any], encoding: tokens.EncodingChoice, body_bytes: int) -> int:
    if encoding.name == tokens.BYTES:
        return body_bytes
    counted = count_prompt(endpoint, payload, encoding.name)
    if not encoding.exact:
        counted = counted * APPROXIMATE_MARGIN_NUMERATOR // APPROXIMATE_MARGIN_DENOMINATOR + APPROXIMATE_MARGIN_TOKENS
    return min(counted, body_bytes)
