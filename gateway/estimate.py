"""The worst-case cost of a request, held before it is forwarded.

Prompt tokens have a free upper bound: a byte-level BPE token covers at least
one byte of UTF-8 text, and the JSON body holds every byte of the prompt's text
(tool definitions, tool calls and schemas included) plus its framing, so
len(body) >= text tokens. Input that is not text in the body is added at its
most: each image at its model's image_tokens_max (its base tokens at detail
"low"), each audio clip at its duration bound from its byte size, each file
(PDF) at the model's file_tokens_max (see gateway/media.py). Output is bounded by max_completion_tokens / max_tokens
(capped at the model's own limit) times max(n, best_of), plus the text of a
`prediction` (rejected predicted tokens are billed as output).

Only when that bound is too coarse for the wallet do we count tighter, and the
work spent on a refusal is bounded: first the least the request can cost
without tokenizing (output, per call, images at their base) is compared with
what the wallet has; then at most limits.tokenize_bytes_max bytes of text are
tokenized, the rest counted by its byte length (tight_prompt_tokens). Either way
the estimate stays an upper bound, since it is what a request is admitted on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from config.pricing import ModelPrice, TokenUsage, cost_nusd
from config.settings import ModelConfig
from gateway import media, tokens
from gateway.errors import ApiError, invalid_request
from gateway.metering import count_into

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
    # best_of (completions) generates that many candidates server-side, each billed.
    best_of = _positive_int(payload, "best_of", CHOICES_MAX)
    if isinstance(best_of, ApiError):
        return best_of
    if best_of is not None and best_of < (choices or 1):
        return invalid_request("best_of must be greater than or equal to n.", "best_of", "invalid_value")
    per_choice = min([model.max_output_tokens, *limits])
    return per_choice * max(choices or 1, best_of or 1) + _prediction_bytes(payload.get("prediction"))


def _prediction_bytes(prediction: Any) -> int:
    """A bound on predicted-output tokens (the rejected ones are billed as output): their bytes."""
    if not isinstance(prediction, dict):
        return 0
    content = prediction.get("content")
    if isinstance(content, str):
        return tokens.utf8_bytes(content)
    if isinstance(content, list):
        return sum(tokens.utf8_bytes(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


@functools.lru_cache(maxsize=1024)
def rates_of(model_name: str, model: ModelConfig) -> media.MediaRates:
    return media.rates_for(model_name, model.image_base_tokens, model.image_tile_tokens, model.image_tokens_max,
                           model.audio_tokens_per_second, model.audio_bytes_per_second_min, model.file_tokens_max)


@dataclass(frozen=True)
class MediaBound:
    most: int  # prompt tokens images and audio can cost at most
    least: int  # ... and at the least (images at their base)


NO_MEDIA = MediaBound(0, 0)


def media_bound(endpoint: str, payload: dict[str, Any], rates: media.MediaRates) -> MediaBound:
    """Images and audio of a chat request, from their parts alone: no decoding, no tokenizing."""
    messages = payload.get("messages") if endpoint == "chat" else None
    if not isinstance(messages, list):
        return NO_MEDIA
    most = least = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue  # the common case: text content, nothing to add
        for part in content:
            kind = tokens.media_part(part) if isinstance(part, dict) else None
            if kind == "image_url":
                image = part.get("image_url")
                low = isinstance(image, dict) and image.get("detail") == "low"
                most += rates.image_base_tokens if low else rates.image_tokens_max
                least += rates.image_base_tokens
            elif kind == "input_audio":
                audio = part.get("input_audio")
                most += media.audio_tokens_bound(audio.get("data") if isinstance(audio, dict) else None, rates)
            elif kind == "file":
                most += rates.file_tokens_max
    return MediaBound(most, least)


def worst_case_nusd(price: ModelPrice, prompt_tokens_max: int, output_max: int) -> int:
    # Cached tokens are never dearer than fresh ones in any price list we know;
    # take the larger price anyway so the bound holds for any configuration.
    per_prompt = max(price.input_per_1m_nusd, price.cached_input_per_1m_nusd)
    bound = ModelPrice(per_prompt, per_prompt, price.output_per_1m_nusd, price.per_call_nusd)
    return cost_nusd(bound, TokenUsage(prompt_tokens=prompt_tokens_max, completion_tokens=output_max))


def tight_prompt_tokens(endpoint: str, payload: dict[str, Any], encoding: tokens.EncodingChoice,
                        rates: media.MediaRates, body_bytes: int, budget_bytes: int | None) -> int:
    """An upper bound of the prompt's tokens, tokenizing at most budget_bytes of text."""
    counter = tokens.PromptCounter(encoding, rates, budget_bytes)
    count_into(endpoint, payload, counter)
    counted = counter.tokenized
    if not encoding.exact:
        counted = counted * APPROXIMATE_MARGIN_NUMERATOR // APPROXIMATE_MARGIN_DENOMINATOR + APPROXIMATE_MARGIN_TOKENS
    # The text (framing included) is in the body; images and audio need not be.
    return min(counted + counter.bounded, body_bytes) + counter.media
