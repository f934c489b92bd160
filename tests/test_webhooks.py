"""Webhooks end to end: a receiver that fails and then recovers gets each event once, in order, signed.

Both backends; the receiver is a small aiohttp server in the test, and the
signature is checked with the recipe the README gives.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import openai
import pytest
from aiohttp import web

from tests.test_api_permissions import call, make_org
from tests.test_multiprocess import FLAT_FEE_NUSD

FAST = {"poll_interval_s": 0.05, "backoff_s": 0.05, "backoff_max_s": 0.2, "settled_s": 0, "allow_http": True,
        "timeout_s": 1, "lease_s": 5}


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The README's recipe: HMAC-SHA256 of "<t>.<body>" with the endpoint's secret, and a fresh t."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) <= tolerance_s


@dataclass
class Receiver:
    url: str
    failures_left: int
    posts: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)  # (answer, headers, body)

    def accepted(self) -> list[dict[str, Any]]:
        return [json.loads(body) for status, _, body in self.posts if status == 200]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    state: dict[str, Receiver] = {}

    async def hook(request: web.Request) -> web.Response:
        got = state["r"]
        body = await request.read()
        status = 500 if got.failures_left > 0 else 200
        got.failures_left -= 1
        got.posts.append((status, dict(request.headers), body))
        return web.Response(status=status, text="down for a moment" if status == 500 else "ok")

    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["r"] = Receiver(f"http://127.0.0.1:{runner.addresses[0][1]}/hook", failures_left=3)
    yield state["r"]
    await runner.cleanup()


@pytest.fixture
def master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())


async def wait_for(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_a_receiver_that_fails_then_recovers_gets_each_event_once_in_order(gateway_factory, receiver, master,
                                                                                 caplog) -> None:
    gw = await gateway_factory(webhooks=FAST)
    org = await make_org(gw, usd="20")
    owner = org.secrets["owner"]
    status, hook = await call(gw, "POST", "/api/webhooks", owner,
                              {"url": receiver.url, "events": ["wallet.balance_low", "cap.reached"]})
    assert status == 201 and hook["secret"].startswith("whsec_"), hook
    status, alert = await call(gw, "POST", "/api/alerts", owner, {"threshold": "19.995"})
    assert status == 201 and alert["armed"], alert
    status, bot = await call(gw, "POST", "/api/bots", owner, {"name": "capped", "daily_cap": "0.01"})
    status, key = await call(gw, "POST", "/api/keys", owner, {"name": "bot", "bot_id": bot["id"]})
    client = gw.client(key["key"])
    await client.chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "hi"}])  # $19.99
    for _ in range(3):  # the cap is reached: three refusals, one event
        with pytest.raises(openai.APIStatusError) as refused:
            await client.chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "hi"}])
        assert refused.value.status_code == 402 and refused.value.code == "budget_exceeded"
    await wait_for(lambda: len(receiver.accepted()) == 2)
    await asyncio.sleep(0.3)  # nothing more arrives
    accepted = receiver.accepted()
    assert [e["type"] for e in accepted] == ["wallet.balance_low", "cap.reached"]  # in order, once each
    assert accepted[0]["data"]["balance_usd"] == "19.99" and accepted[1]["data"]["cap"] == "bot's daily spending cap"
    assert len(receiver.posts) == 5  # three failures first, then two deliveries
    for _, headers, body in receiver.posts:
        assert verify(hook["secret"], headers["Meterway-Signature"], body)
        assert not verify("whsec_wrong", headers["Meterway-Signature"], body)
    status, deliveries = await call(gw, "GET", f"/api/webhooks/{hook['id']}/deliveries", org.secrets["viewer"])
    outcomes = [(d["outcome"], d["status_code"]) for d in reversed(deliveries["data"])]
    assert outcomes == [("failed", 500)] * 3 + [("delivered", 200)] * 2, outcomes
    # The secret is shown once: in no listing, no log line, no row in clear.
    status, listed = await call(gw, "GET", "/api/webhooks", owner)
    assert hook["secret"] not in json.dumps(listed) and hook["secret"] not in caplog.text
    [stored] = await gw.state.book.endpoints(org.wallet_id)
    assert hook["secret"] not in stored.secret_sealed


async def test_a_receiver_that_never_recovers_is_given_up_on_and_the_next_event_goes(gateway_factory, receiver,
                                                                                     master) -> None:
    receiver.failures_left = 2
    gw = await gateway_factory(webhooks={**FAST, "attempts_max": 2})
    org = await make_org(gw, usd="20")
    status, hook = await call(gw, "POST", "/api/webhooks", org.secrets["owner"],
                              {"url": receiver.url, "events": ["cap.reached"]})
    await gw.state.book.emit_event("first", org.wallet_id, "cap.reached", {"n": 1})
    await gw.state.book.emit_event("second", org.wallet_id, "cap.reached", {"n": 2})
    await wait_for(lambda: len(receiver.accepted()) == 1)
    assert receiver.accepted()[0]["id"] == "second"
    status, deliveries = await call(gw, "GET", f"/api/webhooks/{hook['id']}/deliveries", org.secrets["owner"])
    assert [d["outcome"] for d in reversed(deliveries["data"])] == ["failed", "gave_up", "delivered"]


async def test_requests_are_served_while_an_endpoint_is_dead(gateway_factory, master) -> None:
    gw = await gateway_factory(webhooks=FAST)
    org = await make_org(gw, usd="20")
    dead = "http://127.0.0.1:9/hook"  # the discard port: nothing listens
    status, hook = await call(gw, "POST", "/api/webhooks", org.secrets["owner"],
                              {"url": dead, "events": ["wallet.balance_low"]})
    await call(gw, "POST", "/api/alerts", org.secrets["owner"], {"threshold": "19.999"})
    client = gw.client(org.key_secrets["owner"])
    for _ in range(5):
        await client.chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "hi"}])

    async def failed_attempts() -> int:
        _, deliveries = await call(gw, "GET", f"/api/webhooks/{hook['id']}/deliveries", org.secrets["owner"])
        return sum(d["outcome"] == "failed" for d in deliveries["data"])
    deadline = time.monotonic() + 10
    while await failed_attempts() < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_bad_endpoints_and_alerts_are_clear_400s(gateway_factory, master) -> None:
    gw = await gateway_factory()  # allow_http off: production
    org = await make_org(gw)
    owner = org.secrets["owner"]
    for body, param in (({"url": "http://example.com/h", "events": ["cap.reached"]}, "url"),
                        ({"url": "ftp://example.com", "events": ["cap.reached"]}, "url"),
                        ({"url": "https://u:p@example.com", "events": ["cap.reached"]}, "url"),
                        ({"url": "https://example.com", "events": ["nope"]}, "events.0"),
                        ({"url": "https://example.com", "events": []}, "events")):
        status, answer = await call(gw, "POST", "/api/webhooks", owner, body)
        assert status == 400 and answer["error"]["param"] == param, (body, answer)
    for body in ({}, {"threshold": "5", "share_percent": 10}, {"share_percent": 0}, {"threshold": "-1"}):
        status, answer = await call(gw, "POST", "/api/alerts", owner, body)
        assert status == 400, (body, answer)
    status, made = await call(gw, "POST", "/api/webhooks", owner, {"url": "https://example.com/h",
                                                                    "events": ["deposit.completed"]})
    assert status == 201
    assert (await call(gw, "DELETE", f"/api/webhooks/{made['id']}", owner))[0] == 200
    assert (await call(gw, "DELETE", f"/api/webhooks/{made['id']}", owner))[0] == 404


async def test_without_a_master_key_no_endpoint_can_be_made(gateway_factory, monkeypatch) -> None:
    monkeypatch.delenv("MW_MASTER_KEY", raising=False)
    gw = await gateway_factory()
    org = await make_org(gw)
    status, answer = await call(gw, "POST", "/api/webhooks", org.secrets["owner"],
                                {"url": "https://example.com/h", "events": ["cap.reached"]})
    assert status == 503 and answer["error"]["code"] == "master_key_unavailable", answer


async def test_a_daily_summary_is_written_once_per_wallet_and_day(gw) -> None:
    from config.webhooks import WebhookSettings
    from gateway.money.secrets_box import BoxUnavailable
    from gateway.money.webhook_delivery import Deliverer
    from ledger.webhooks import Endpoint

    wallet_id, secret = await gw.funded_key("1")
    await gw.state.book.create_endpoint(Endpoint("we-sum", wallet_id, "https://example.com/h",
                                                 ("usage.daily_summary",), "sealed"))
    for _ in range(2):
        await gw.client(secret).chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "hi"}])
    await gw.settled_everything()
    deliverer = Deliverer(gw.state.book, gw.state.upstream, BoxUnavailable("none"), WebhookSettings())
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    await deliverer.summarise_days(tomorrow)
    again = Deliverer(gw.state.book, gw.state.upstream, BoxUnavailable("none"), WebhookSettings())
    await again.summarise_days(tomorrow)  # another process: the event id is the same, written once
    endpoint = await gw.state.book.endpoint("we-sum")
    event = await gw.state.book.next_event(endpoint, 0)
    assert event is not None and event.type == "usage.daily_summary"
    assert event.payload["date"] == datetime.now(UTC).strftime("%Y-%m-%d")
    assert (event.payload["requests"], event.payload["cost_nusd"]) == (2, 2 * FLAT_FEE_NUSD)
    await gw.state.book.record_attempt("we-sum", event, 1, "delivered", 200, None, 1.0, None)
    assert await gw.state.book.next_event(await gw.state.book.endpoint("we-sum"), 0) is None
