"""The hold is a worst case for every billable input, and a refusal is cheap (issue 6, items 4 and 13).

Input that is not in the body (an image by URL, audio, best_of candidates) is
held at its most, so concurrent requests can never spend past a wallet; and a
refused request tokenizes at most limits.tokenize_bytes_max bytes, whatever
its size (checked by counting the characters handed to the tokenizer, not by
timing: the CPU figures are in bench/refusal.py).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from config.settings import ModelConfig
from gateway.dialects.openai_prompt import media_bound, output_tokens_max, tight_prompt_tokens
from gateway.errors import ApiError
from gateway.metering import media, tokens
from gateway.metering.metering import rates_of
from ledger.book import check_invariants
from ledger.money import parse_usd

MINI = "gpt-4o-mini"
INSTRUCT = "gpt-3.5-turbo-instruct"
IMAGE_URL = "https://example.com/photo.jpg"
# What the fake upstream reports for one image request: a large image on gpt-4o-mini.
IMAGE_PROMPT_TOKENS = 40_000


def image_request(directives: str) -> bytes:
    return json.dumps({"model": MINI, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": f"What is this? {directives}"},
        {"type": "image_url", "image_url": {"url": IMAGE_URL}},
    ]}]}).encode()


async def test_concurrent_image_url_requests_never_overspend(gw) -> None:
    """The issue's case: 50 concurrent image requests on a $0.05 wallet were served $0.75."""
    wallet, key = await gw.funded_key("0.05")
    body = image_request(f"FAKE:prompt_tokens={IMAGE_PROMPT_TOKENS} FAKE:completion_tokens=5")
    answers = await asyncio.gather(*(gw.raw_post("/v1/chat/completions", body, key) for _ in range(50)))
    statuses = [status for status, _, _ in answers]
    assert set(statuses) <= {200, 402}, statuses
    assert 0 < statuses.count(200) < 50 and statuses.count(402) > 0
    assert all("x-usage-shortfall" not in {k.lower() for k in headers} for _, headers, _ in answers)
    await gw.settled_everything()
    totals = await gw.state.book.totals()
    check_invariants(totals)
    assert totals.usage_shortfall_nusd == 0, "an image request was served past the wallet's balance"
    assert totals.usage_charged_nusd <= parse_usd("0.05")
    assert await gw.balance(wallet) == parse_usd("0.05") - totals.usage_charged_nusd >= 0


async def test_best_of_is_held(gw) -> None:
    _, key = await gw.funded_key("0.01")
    one = {"model": INSTRUCT, "prompt": "Say hi", "max_tokens": 1000}  # 1000 x $2/1M = $0.002: fits
    status, _, answer = await gw.raw_post("/v1/completions", json.dumps(one).encode(), key)
    assert status == 200, answer
    # 20 candidates of 1000 tokens: $0.04 of output at most, more than the wallet has.
    status, _, answer = await gw.raw_post("/v1/completions", json.dumps(one | {"best_of": 20}).encode(), key)
    assert status == 402 and answer["error"]["code"] == "insufficient_quota", answer
    status, _, answer = await gw.raw_post("/v1/completions", json.dumps(one | {"best_of": 2, "n": 3}).encode(), key)
    assert status == 400 and answer["error"]["param"] == "best_of", answer


def test_output_bound_takes_the_larger_of_n_and_best_of() -> None:
    model = ModelConfig(kind="completion", max_output_tokens=4096)
    assert output_tokens_max("completion", {"max_tokens": 100, "best_of": 5}, model) == 500
    assert output_tokens_max("completion", {"max_tokens": 100, "n": 3, "best_of": 5}, model) == 500
    assert output_tokens_max("completion", {"max_tokens": 100, "n": 2}, model) == 200
    assert isinstance(output_tokens_max("completion", {"best_of": 0}, model), ApiError)
    assert isinstance(output_tokens_max("completion", {"best_of": "3"}, model), ApiError)
    # Rejected predicted tokens are billed as output: their text is in the bound.
    assert output_tokens_max("chat", {"max_tokens": 10, "prediction": {"type": "content", "content": "x" * 50}},
                             ModelConfig()) == 60


def test_media_bound_holds_each_image_and_clip_at_its_most() -> None:
    rates = rates_of(MINI, ModelConfig())
    audio = base64.b64encode(bytes(10_000)).decode()  # 10 kB: 10 s at most at 1000 B/s
    payload: dict[str, Any] = {"messages": [
        {"role": "system", "content": "text only"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": IMAGE_URL}},
            {"type": "image_url", "image_url": {"url": IMAGE_URL, "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}},
        ]},
    ]}
    bound = media_bound("chat", payload, rates)
    assert bound.most == rates.image_tokens_max + rates.image_base_tokens + 10 * rates.audio_tokens_per_second
    assert bound.least == 2 * rates.image_base_tokens
    # And the tight count never exceeds what the hold allowed for.
    tight = tight_prompt_tokens("chat", payload, tokens.encoding_for(MINI), rates, len(json.dumps(payload)), None)
    assert tight <= len(json.dumps(payload)) + bound.most
    assert media_bound("chat", {"messages": [{"role": "user", "content": "hi"}]}, rates).most == 0
    # A file (PDF) has no size we can know: the model's file_tokens_max each.
    pdf = {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]}]}
    assert media_bound("chat", pdf, rates).most == rates.file_tokens_max == 1_000_000
    assert rates_of(MINI, ModelConfig(file_tokens_max=200_000)).file_tokens_max == 200_000


def test_configured_image_and_audio_bounds_are_used() -> None:
    rates = rates_of("my-vision-model", ModelConfig(image_base_tokens=100, image_tile_tokens=200,
                                                    image_tokens_max=5000, audio_tokens_per_second=25))
    assert (rates.image_base_tokens, rates.image_tile_tokens, rates.image_tokens_max) == (100, 200, 5000)
    assert media.audio_tokens_bound(base64.b64encode(bytes(3000)).decode(), rates) == 3 * 25


# --- item 13: a refusal's work is bounded --------------------------------------------

BIG_PROMPT = "the quick brown fox jumps over the lazy dog " * 90_000  # ~3.9 MB


def big_request(max_tokens: int) -> bytes:
    return json.dumps({"model": MINI, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": BIG_PROMPT}]}).encode()


async def test_a_huge_refused_prompt_is_not_tokenized_in_full(gateway_factory) -> None:
    gw = await gateway_factory(limits={"body_bytes_max": 4 * 1024 * 1024})
    budget = gw.state.settings.limits.tokenize_bytes_max
    _, key = await gw.funded_key("0.01")  # covers the output, not 3.9 MB of prompt
    body = big_request(10)
    assert 3_800_000 < len(body) <= 4 * 1024 * 1024
    before = tokens.tokenized_chars()
    status, _, answer = await gw.raw_post("/v1/chat/completions", body, key)
    assert status == 402 and answer["error"]["code"] == "insufficient_quota", answer
    assert tokens.tokenized_chars() - before <= budget, "the refusal tokenized more than limits.tokenize_bytes_max"


async def test_a_refusal_the_output_alone_decides_tokenizes_nothing(gateway_factory) -> None:
    gw = await gateway_factory(limits={"body_bytes_max": 4 * 1024 * 1024})
    _, key = await gw.funded_key("0.000001")  # less than 16384 output tokens cost
    before = tokens.tokenized_chars()
    status, _, answer = await gw.raw_post("/v1/chat/completions", big_request(16384), key)
    assert status == 402, answer
    assert tokens.tokenized_chars() == before


async def test_the_admitted_fast_path_tokenizes_nothing(gw) -> None:
    _, key = await gw.funded_key("1")
    before = tokens.tokenized_chars()
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=[{"role": "user", "content": "hello FAKE:completion_tokens=3"}])
    assert raw.http_response.status_code == 200
    assert tokens.tokenized_chars() == before


def test_a_tight_estimate_past_the_budget_stays_an_upper_bound() -> None:
    payload = {"messages": [{"role": "user", "content": BIG_PROMPT[:200_000]}, {"role": "user", "content": "short"}]}
    choice = tokens.encoding_for("gpt-3.5-turbo")  # exact encoding: no margin
    body_bytes = len(json.dumps(payload))
    full = tight_prompt_tokens("chat", payload, choice, media.DEFAULT_RATES, body_bytes, None)
    budgeted = tight_prompt_tokens("chat", payload, choice, media.DEFAULT_RATES, body_bytes, 1024)
    assert full < budgeted <= body_bytes
