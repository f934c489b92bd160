"""The fake Stripe against the real stripe library and Stripe's published example objects.

If the fake drifted from Stripe, the top-up tests would prove nothing: here the
stripe library itself creates, reads and expires sessions through the front,
its own webhook check verifies the fake's signatures, and every object carries
every field of Stripe's example (../shared/specs/stripe-fixtures3.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import stripe
from aiohttp import web

from fakes.stripe.objects import fixtures

SPECS = Path(__file__).resolve().parents[2] / "shared" / "specs" / "stripe-fixtures3.json"
SECRET = "whsec_fake_stripe_test_0123456789"


HTTP = stripe.AIOHTTPClient


def _client(fake_stripe, http: stripe.AIOHTTPClient) -> stripe.StripeClient:
    return stripe.StripeClient(fake_stripe.secret_key, base_addresses={"api": fake_stripe.api_base}, http_client=http)


def _specs_or_skip() -> None:
    if not SPECS.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SPECS} is missing in CI")
        pytest.skip(f"Stripe's example objects are not at {SPECS} (a fresh clone without ../shared)")


async def _session(client: stripe.StripeClient, key: str | None = None, amount: int = 1234) -> stripe.checkout.Session:
    params = {"mode": "payment", "success_url": "https://app.example.com/ok", "cancel_url": "https://app.example.com/no",
              "client_reference_id": "dep_1", "metadata": {"deposit_id": "dep_1"},
              "line_items": [{"quantity": 1, "price_data": {"currency": "usd", "unit_amount": amount,
                                                            "product_data": {"name": "credits"}}}]}
    return await client.v1.checkout.sessions.create_async(params, {"idempotency_key": key} if key else None)


async def test_sessions_through_the_stripe_library_in_stripes_shape(fake_stripe) -> None:
    _specs_or_skip()
    http = HTTP(timeout=10)
    client = _client(fake_stripe, http)
    try:
        made = await _session(client, "order-1")
        assert made.amount_total == 1234 and made.status == "open" and made.payment_status == "unpaid"
        assert set(fixtures()["checkout.session"]) <= set(made.to_dict()), "a field of Stripe's session is missing"
        assert (await _session(client, "order-1")).id == made.id  # the same key and parameters: the same session
        with pytest.raises(stripe.IdempotencyError):
            await _session(client, "order-1", amount=999)
        with pytest.raises(stripe.InvalidRequestError) as missing:
            await client.v1.checkout.sessions.create_async({"mode": "payment"})
        assert missing.value.param == "success_url"
        with pytest.raises(stripe.InvalidRequestError):
            await client.v1.checkout.sessions.retrieve_async("cs_test_nope")
        expired = await client.v1.checkout.sessions.expire_async(made.id)
        assert expired.status == "expired"
    finally:
        await http.close_async()


async def test_events_verify_with_the_stripe_library_and_carry_stripes_fields(fake_stripe) -> None:
    _specs_or_skip()
    received: list[tuple[bytes, str]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers["Stripe-Signature"]))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    http = HTTP(timeout=10)
    client = _client(fake_stripe, http)
    try:
        await fake_stripe.register_webhook(f"http://127.0.0.1:{port}/hook", SECRET)
        made = await _session(client)
        await fake_stripe.pay(made.id)
        paid = await client.v1.checkout.sessions.retrieve_async(made.id)
        assert paid.payment_status == "paid" and paid.payment_intent
        intent = await client.v1.payment_intents.retrieve_async(paid.payment_intent)
        assert intent.status == "succeeded" and isinstance(intent.latest_charge, str)
        dispute = await fake_stripe.dispute(intent.latest_charge, 500)
        assert set(fixtures()["dispute"]) <= set(dispute["dispute"])
        ours = [(body, sig) for body, sig in received if json.loads(body)["type"].startswith(("checkout.", "charge."))]
        assert [json.loads(b)["type"] for b, _ in ours] == ["checkout.session.completed", "charge.dispute.created"]
        for body, signature in ours:
            event = stripe.Webhook.construct_event(body, signature, SECRET)
            assert set(fixtures()["event"]) <= set(event.to_dict())
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(ours[0][0], ours[0][1], "whsec_someone_else")
    finally:
        await http.close_async()
        await runner.cleanup()
