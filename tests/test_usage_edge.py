"""Usage at the edges: absurd upstream counts and free models (issue 6, items 7 and 8).

Every served call ends with a usage row: an upstream reporting 10^14 tokens is
served, recorded capped and flagged, the wallet pays what it has and the rest
is a shortfall; a zero-priced model is settled at cost 0 and shows it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config.pricing import TokenUsage, cost_nusd
from config.settings import Settings
from fakes.openai import FakeConfig, start_fake_upstream
from gateway.metering.metering import CAPPED_SUFFIX
from ledger.book import check_invariants
from ledger.money import AMOUNT_NUSD_MAX, parse_usd
from tests.conftest import store_settings
from tests.gateway_harness import MODELS, Harness, settings_for, start_gateway

MINI = "gpt-4o-mini"
FREE = "free-chat"
ABSURD = 10**14


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# --- item 7: absurd upstream usage ---------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_absurd_upstream_usage_is_served_recorded_capped_and_flagged(gateway_factory, caplog, stream: bool) -> None:
    gw = await gateway_factory()
    wallet, key = await gw.funded_key("1")
    tokens_max = gw.state.settings.limits.usage_tokens_max
    with caplog.at_level(logging.ERROR, logger="meterway.calls"):
        if stream:
            raw = await gw.client(key).chat.completions.with_raw_response.create(
                model=MINI, messages=user(f"FAKE:prompt_tokens={ABSURD} FAKE:completion_tokens=3"),
                stream=True, stream_options={"include_usage": True})
            chunks = [chunk async for chunk in raw.parse()]
            assert raw.http_response.status_code == 200
            assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == ABSURD
        else:
            raw = await gw.client(key).chat.completions.with_raw_response.create(
                model=MINI, messages=user(f"FAKE:prompt_tokens={ABSURD} FAKE:completion_tokens=3"))
            assert raw.http_response.status_code == 200 and raw.parse().usage.prompt_tokens == ABSURD
            assert "x-usage-shortfall" in raw.headers and "x-usage-cost" in raw.headers
    request_id = raw.headers["x-request-id"]
    usage = await gw.usage(request_id, key)
    capped = cost_nusd(gw.state.routes[MINI].price, TokenUsage(tokens_max, 3))
    assert usage["usage_source"] == "upstream" + CAPPED_SUFFIX, usage
    assert usage["usage"]["prompt_tokens"] == tokens_max and usage["usage"]["completion_tokens"] == 3
    assert usage["cost_nusd"] == min(capped, AMOUNT_NUSD_MAX)
    assert usage["charged_nusd"] == parse_usd("1"), "the wallet pays what it has, no more"
    assert usage["shortfall_nusd"] == usage["cost_nusd"] - usage["charged_nusd"] > 0
    assert await gw.balance(wallet) == 0
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and request_id in r.getMessage()]
    assert logged and MINI in logged[0].getMessage() and str(ABSURD) in logged[0].getMessage(), caplog.text
    check_invariants(await gw.state.book.totals())


async def test_usage_beyond_the_ledger_is_capped_at_the_largest_amount(gateway_factory) -> None:
    """Within the token bound but priced beyond what the ledger holds: cost capped, flagged."""
    gw = await gateway_factory(limits={"usage_tokens_max": ABSURD})
    wallet, key = await gw.funded_key("2")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=MINI, messages=user(f"FAKE:prompt_tokens={ABSURD} FAKE:completion_tokens=3"))
    assert raw.http_response.status_code == 200
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert usage["usage_source"] == "upstream" + CAPPED_SUFFIX and usage["cost_nusd"] == AMOUNT_NUSD_MAX
    assert (usage["charged_nusd"], usage["shortfall_nusd"]) == (parse_usd("2"), AMOUNT_NUSD_MAX - parse_usd("2"))
    assert await gw.balance(wallet) == 0
    check_invariants(await gw.state.book.totals())


# --- item 8: free calls ------------------------------------------------------------


@pytest.fixture
async def free_gateway(backend: str, tmp_path) -> AsyncIterator[Harness]:
    """The usual gateway plus FREE, a chat model with every price at zero."""
    runner, upstream = await start_fake_upstream(FakeConfig(models=(*MODELS, FREE)))
    async with store_settings(backend, tmp_path) as store:
        base = settings_for(upstream, store)
        models: dict[str, Any] = {**MODELS, FREE: {"max_output_tokens": 256}}
        settings = Settings(**{**base.model_dump(exclude={"models", "providers"}),
                               "models": models,
                               "providers": {"fake": {"base_url": upstream, "models": list(models)}}})
        gw = await start_gateway(settings)
        try:
            yield gw
            await gw.assert_no_holds()
            await gw.totals()
        finally:
            await gw.runner.cleanup()
            await runner.cleanup()


async def test_a_free_call_is_settled_at_zero_and_visible(free_gateway: Harness) -> None:
    gw = free_gateway
    wallet, key = await gw.funded_key("0")  # an empty wallet may use a free model
    before = await gw.state.book.totals()
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=FREE, messages=user("FAKE:prompt_tokens=40 FAKE:completion_tokens=5"))
    assert raw.http_response.status_code == 200
    assert raw.headers["x-usage-cost"] == "0" and raw.headers["x-total-tokens"] == "45"
    assert "x-usage-shortfall" not in raw.headers
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert (usage["cost_nusd"], usage["charged_nusd"], usage["shortfall_nusd"], usage["held_nusd"]) == (0, 0, 0, 0)
    assert usage["model"] == FREE and usage["usage"]["total_tokens"] == 45 and usage["status"] == "ok"
    after = await gw.state.book.totals()
    assert after.transfer_count == before.transfer_count, "a free call moves no money: no zero-amount transfer"
    assert await gw.balance(wallet) == 0
    check_invariants(after)
    await gw.settled_everything()
    assert await gw.state.holds.wallet(wallet) is None, "a free call never touches the hold store"


async def test_a_free_stream_shows_cost_zero_and_is_settled(free_gateway: Harness) -> None:
    gw = free_gateway
    wallet, key = await gw.funded_key("0")
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=FREE, messages=user("FAKE:prompt_tokens=12 FAKE:completion_tokens=3"), stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in raw.parse()]
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None and final.usage.completion_tokens == 3
    assert final.usage.model_extra["cost"] == 0
    usage = await gw.usage(raw.headers["x-request-id"], key)
    assert usage["cost_nusd"] == 0 and usage["usage"]["prompt_tokens"] == 12 and usage["status"] == "ok"
    # Without the usage chunk the call is still recorded.
    raw = await gw.client(key).chat.completions.with_raw_response.create(
        model=FREE, messages=user("FAKE:completion_tokens=2"), stream=True)
    assert all([chunk.choices async for chunk in raw.parse()])
    assert (await gw.usage(raw.headers["x-request-id"], key))["cost_nusd"] == 0
    holds = await gw.state.holds.wallet(wallet)
    assert holds is None or holds.hold_count == 0, "a hold of 0 never reaches the hold store"
    check_invariants(await gw.state.book.totals())
