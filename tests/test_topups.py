"""Card top-ups end to end, on both backends: quote, Checkout, the signed webhook, the credit, and spending it.

Stripe is played by tests/stripe_harness.py: localstripe for payments, the
front in fakes/stripe for Checkout Sessions and disputes, events signed as
Stripe signs them and verified by the stripe library inside the gateway.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import openai
import pytest

from ledger.book import FUNDING_ACCOUNT, Transfer, TransferKind, check_invariants
from ledger.money import parse_usd
from tests.test_api_permissions import Org, call, make_org

WEBHOOK_SECRET = "whsec_meterwaytest0123456789"
APP = "https://app.example.com"
RETURN = {"success_url": f"{APP}/paid?session={{CHECKOUT_SESSION_ID}}", "cancel_url": f"{APP}/cancelled"}
WAIT_S = 10.0


@pytest.fixture
async def stripe_gw(gateway_factory, fake_stripe, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", fake_stripe.secret_key)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    gw = await gateway_factory(stripe={"enabled": True, "api_base": fake_stripe.api_base, "allowed_origins": [APP],
                                       "max_retries": 0, "timeout_s": 5},
                               topup={"auto_reload_refresh_s": 0.05})
    await fake_stripe.register_webhook(f"{gw.base_url}/webhooks/stripe", WEBHOOK_SECRET)
    return gw


async def start(gw, org: Org, body: dict[str, Any]) -> dict[str, Any]:
    status, started = await call(gw, "POST", "/api/wallet/deposits", org.secrets["owner"], {**RETURN, **body})
    assert status == 201, started
    return started


async def deposit(gw, org: Org, deposit_id: str) -> dict[str, Any]:
    status, found = await call(gw, "GET", f"/api/wallet/deposits/{deposit_id}", org.secrets["owner"])
    assert status == 200, found
    return found


async def wait_status(gw, org: Org, deposit_id: str, status: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while True:
        found = await deposit(gw, org, deposit_id)
        if found["status"] == status or time.monotonic() > deadline:
            assert found["status"] == status, found
            return found
        await asyncio.sleep(0.05)


async def test_the_whole_card_flow_then_a_request_spends_it(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    status, quoted = await call(gw, "POST", "/api/topup/quote", org.secrets["owner"], {"tier": "100"})
    assert status == 200 and quoted["payable"]["usd"] == "95" and quoted["credited"]["usd"] == "100", quoted
    started = await start(gw, org, {"tier": "100"})
    assert started["checkout_url"].startswith(fake_stripe.api_base) and started["deposit"]["status"] == "pending"
    assert started["quote"] == quoted
    session = await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}")
    assert session["amount_total"] == 9500 and session["client_reference_id"] == started["deposit"]["id"], session
    await fake_stripe.pay(started["session_id"])
    credited = await wait_status(gw, org, started["deposit"]["id"], "completed")
    assert credited["credited"] and credited["amount_credited"]["usd"] == "100" and credited["discount"]["usd"] == "5"
    by_session = await deposit(gw, org, started["session_id"])  # the success page knows the session id only
    assert by_session["id"] == credited["id"]
    status, verified = await call(gw, "GET", f"/api/wallet/deposits?session_id={started['session_id']}",
                                  org.secrets["viewer"])
    assert status == 200 and verified == credited, verified
    assert await gw.balance(org.wallet_id) == parse_usd("100")
    status, history = await call(gw, "GET", "/api/wallet/transactions?type=deposit,discount", org.secrets["owner"])
    assert sorted(e["amount"]["usd"] for e in history["data"]) == ["5", "95"], history
    response = await gw.client(org.key_secrets["owner"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "spend it"}])
    await gw.settled_everything()
    assert await gw.balance(org.wallet_id) == parse_usd("100") - parse_usd(response.headers["x-usage-cost"])
    check_invariants(await gw.state.book.totals())


async def test_duplicates_and_out_of_order_credit_once(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    started = await start(gw, org, {"amount": "20.00"})
    await fake_stripe.pay(started["session_id"], outcome="async_pending")
    await wait_status(gw, org, started["deposit"]["id"], "pending")
    await fake_stripe.async_result(started["session_id"], succeeded=True)
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    events = [e for e in await fake_stripe.events() if e["type"].startswith("checkout.session")]
    for event in reversed(events):  # newest first, each three more times
        await fake_stripe.resend(event["id"], times=3)
    assert await gw.balance(org.wallet_id) == parse_usd("20")
    status, history = await call(gw, "GET", "/api/wallet/transactions?type=deposit", org.secrets["owner"])
    assert history["total"] == 1, history


async def test_a_bad_signature_or_a_stale_timestamp_changes_nothing(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    started = await start(gw, org, {"amount": "10.00"})
    session = await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}")
    forged = {"id": "evt_forged", "object": "event", "type": "checkout.session.completed",
              "data": {"object": {**session, "status": "complete", "payment_status": "paid"}}}
    payload = json.dumps(forged).encode()
    for header in (fake_stripe.sign(payload, "whsec_not_ours_0123456789"),
                   fake_stripe.sign(payload, WEBHOOK_SECRET, int(time.time()) - 3600),  # past the 300 s tolerance
                   None, "t=1,v1=deadbeef"):
        async with aiohttp.ClientSession() as http:
            headers = {"Content-Type": "application/json", **({"Stripe-Signature": header} if header else {})}
            async with http.post(f"{gw.base_url}/webhooks/stripe", data=payload, headers=headers) as answer:
                body = await answer.json()
                assert answer.status == 400 and body["error"]["code"] == "invalid_signature", body
    assert (await deposit(gw, org, started["deposit"]["id"]))["status"] == "pending"
    assert await gw.balance(org.wallet_id) == 0


async def test_an_expired_session_and_a_failed_async_payment(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    expired = await start(gw, org, {"amount": "10.00"})
    await fake_stripe.expire(expired["session_id"])
    await wait_status(gw, org, expired["deposit"]["id"], "expired")
    failed = await start(gw, org, {"amount": "15.00"})
    await fake_stripe.pay(failed["session_id"], outcome="async_pending")
    await fake_stripe.async_result(failed["session_id"], succeeded=False)
    await wait_status(gw, org, failed["deposit"]["id"], "failed")
    assert await gw.balance(org.wallet_id) == 0


async def test_a_refund_and_a_dispute_after_the_money_was_spent(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    started = await start(gw, org, {"amount": "10.00"})
    await fake_stripe.pay(started["session_id"])
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    intent_id = (await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}"))["payment_intent"]
    # $8 of the $10 is spent; then the card network takes back half, and the rest is disputed
    await gw.state.book.transfer(Transfer("spend-1", org.wallet_id, FUNDING_ACCOUNT, parse_usd("8"),
                                          TransferKind.ADJUSTMENT, memo="spent"))
    await fake_stripe.refund(intent_id, 500)
    charge_id = (await fake_stripe.get(f"/v1/payment_intents/{intent_id}"))["latest_charge"]
    await fake_stripe.dispute(charge_id, 500)
    deadline = time.monotonic() + WAIT_S
    while (await deposit(gw, org, started["deposit"]["id"]))["status"] != "refunded" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    found = await deposit(gw, org, started["deposit"]["id"])
    assert found["status"] == "refunded", found
    assert await gw.balance(org.wallet_id) == 0
    assert await gw.state.book.owed(org.wallet_id) == parse_usd("8")
    status, history = await call(gw, "GET", "/api/wallet/transactions?type=card_refund,chargeback", org.secrets["owner"])
    # The wallet shows what left it ($2 of the refund); the rest of both is owed, not lost.
    assert [(e["type"], e["amount"]["usd"]) for e in history["data"]] == [("card_refund", "-2")], history
    for event in [e for e in await fake_stripe.events() if e["type"].startswith("charge.")]:
        await fake_stripe.resend(event["id"], times=2)
    assert await gw.state.book.owed(org.wallet_id) == parse_usd("8")
    check_invariants(await gw.state.book.totals())


@pytest.mark.parametrize("body, param, code", [
    ({"amount": "4.99"}, "amount", "amount_out_of_range"),
    ({"amount": "1000.01"}, "amount", "amount_out_of_range"),
    ({"amount": "10.001"}, "amount", "invalid_amount"),
    ({"amount": 10}, "amount", "invalid_value"),
    ({"tier": "75"}, "tier", "unknown_tier"),
    ({"tier": "100", "amount": "100"}, "amount", "invalid_request"),
    ({"amount": "10", "success_url": "https://evil.example.com/x"}, "success_url", "origin_not_allowed"),
    ({"amount": "10", "cancel_url": "http://app.example.com/x"}, "cancel_url", "origin_not_allowed"),
    ({"amount": "10", "success_url": "javascript:alert(1)"}, "success_url", "invalid_url"),
])
async def test_every_bound_is_a_clear_400(stripe_gw, body, param, code):
    gw = stripe_gw
    org = await make_org(gw, "0")
    status, error = await call(gw, "POST", "/api/wallet/deposits", org.secrets["owner"], {**RETURN, **body})
    assert status == 400 and error["error"]["param"] == param and error["error"]["code"] == code, error
    status, listed = await call(gw, "GET", "/api/wallet/deposits", org.secrets["owner"])
    assert listed["total"] == 0, listed  # nothing was started


async def test_only_owners_top_up(stripe_gw):
    org = await make_org(stripe_gw, "0")
    status, reload = await call(stripe_gw, "PUT", "/api/wallet/auto-reload", org.secrets["owner"],
                                {"enabled": True, "threshold": "5", "amount": "10"})
    assert status == 200 and reload["enabled"] and reload["needs_card"] and not reload["card_saved"], reload
    for role in ("owner", "developer", "viewer"):
        status, seen = await call(stripe_gw, "GET", "/api/wallet/auto-reload", org.secrets[role])
        assert status == 200 and seen == reload, seen
    status, wallet = await call(stripe_gw, "GET", "/api/wallet", org.secrets["viewer"])
    assert wallet["auto_reload"] == reload, wallet
    for body, param in (({"enabled": True, "threshold": "5", "amount": "4.99"}, "amount"),
                        ({"enabled": True, "threshold": "5.001", "amount": "10"}, "threshold")):
        status, error = await call(stripe_gw, "PUT", "/api/wallet/auto-reload", org.secrets["owner"], body)
        assert status == 400 and error["error"]["param"] == param, error
    for role, expected in (("developer", 403), ("viewer", 403)):
        status, error = await call(stripe_gw, "POST", "/api/wallet/deposits", org.secrets[role], {**RETURN, "amount": "10"})
        assert status == expected, error
        status, error = await call(stripe_gw, "PUT", "/api/wallet/auto-reload", org.secrets[role],
                                   {"enabled": True, "threshold": "5", "amount": "10"})
        assert status == expected, error


async def test_a_keyless_purchase_reveals_its_keys_once_and_recovers(stripe_gw, fake_stripe):
    gw = stripe_gw
    async with aiohttp.ClientSession() as http:
        async def post(path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
            async with http.post(f"{gw.base_url}{path}", json=body or {}) as answer:
                return answer.status, await answer.json()

        status, started = await post("/api/keyless/checkout", {**RETURN, "tier": "50"})
        assert status == 201 and started["recovery_code"] and started["quote"]["payable"]["usd"] == "47.5", started
        session_id = started["session_id"]
        status, early = await post(f"/api/keyless/{session_id}/reveal")
        assert status == 409 and early["error"]["code"] == "payment_pending", early
        await fake_stripe.pay(session_id)
        deadline = time.monotonic() + WAIT_S
        while (found := await post(f"/api/keyless/{session_id}/reveal"))[0] == 409 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        status, first = found
        assert status == 200 and first["api_key"].startswith("mw-"), first
        status, again = await post(f"/api/keyless/{session_id}/reveal")
        assert status == 409 and again["error"]["code"] == "already_revealed", again
        status, wrong = await post(f"/api/keyless/{session_id}/recover", {"recovery_code": "not-it"})
        assert status == 403 and wrong["error"]["code"] == "invalid_recovery_code", wrong
        status, keys = await post(f"/api/keyless/{session_id}/recover", {"recovery_code": started["recovery_code"]})
        assert status == 200 and keys["api_key"].startswith("mw-") and keys["management_key"].startswith("mwm-"), keys
    assert await gw.balance(keys["wallet"]) == parse_usd("50")
    response = await gw.client(keys["api_key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "bought without an account"}])
    assert response.http_response.status_code == 200
    status, wallet = await call(gw, "GET", "/api/wallet", keys["management_key"])
    assert status == 200 and wallet["id"] == keys["wallet"], wallet
    with pytest.raises(openai.AuthenticationError):  # the keys shown first stop working after a recovery
        await gw.client(first["api_key"]).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    status, _ = await call(gw, "GET", "/api/wallet", first["management_key"])
    assert status == 401
    gw.wallets.append(keys["wallet"])


async def test_a_failing_handler_answers_500_so_that_stripe_retries(stripe_gw, fake_stripe, monkeypatch):
    gw = stripe_gw
    org = await make_org(gw, "0")
    started = await start(gw, org, {"amount": "12.00"})
    payments = gw.state.payments
    real = payments.webhooks.handle
    failures = []

    async def broken(event):
        if event["type"] == "checkout.session.completed" and not failures:
            failures.append(event["id"])
            raise ConnectionError("the ledger went away")
        return await real(event)

    monkeypatch.setattr(payments.webhooks, "handle", broken)
    await fake_stripe.pay(started["session_id"])  # first try 500, the fake retries as Stripe does
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    delivered = next(e for e in await fake_stripe.events() if e["id"] == failures[0])
    assert delivered["_deliveries"] == [200], delivered  # its retry succeeded
    assert await gw.balance(org.wallet_id) == parse_usd("12")


async def test_stripe_unreachable_at_checkout_is_a_503_and_starts_nothing(gateway_factory, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", "sk_test_unreachable_0123456789")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    gw = await gateway_factory(stripe={"enabled": True, "api_base": "http://127.0.0.1:9", "allowed_origins": [APP],
                                       "max_retries": 1, "timeout_s": 2})
    org = await make_org(gw, "0")
    status, error = await call(gw, "POST", "/api/wallet/deposits", org.secrets["owner"], {**RETURN, "amount": "10"})
    assert status == 503 and error["error"]["code"] == "payments_unavailable", error
    status, listed = await call(gw, "GET", "/api/wallet/deposits", org.secrets["owner"])
    assert [d["status"] for d in listed["data"]] == ["failed"], listed  # recorded, never payable


async def test_bought_credit_with_validity_shows_when_it_expires(gateway_factory, fake_stripe, monkeypatch):
    monkeypatch.setenv("STRIPE_SECRET_KEY", fake_stripe.secret_key)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    gw = await gateway_factory(stripe={"enabled": True, "api_base": fake_stripe.api_base, "allowed_origins": [APP]},
                               topup={"credit_validity_days": 30})
    await fake_stripe.register_webhook(f"{gw.base_url}/webhooks/stripe", WEBHOOK_SECRET)
    org = await make_org(gw, "2")  # $2 that never expires
    started = await start(gw, org, {"amount": "10.00"})
    await fake_stripe.pay(started["session_id"])
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    status, wallet = await call(gw, "GET", "/api/wallet", org.secrets["viewer"])
    expiring = wallet["next_expiry"]
    assert expiring["amount"]["usd"] == "10" and expiring["expires_at"].endswith("Z"), wallet
    days = (datetime.fromisoformat(expiring["expires_at"]) - datetime.now(UTC)).days
    assert 29 <= days <= 30, expiring


async def test_checkout_saves_the_card_for_auto_reload(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    status, reload = await call(gw, "PUT", "/api/wallet/auto-reload", org.secrets["owner"],
                                {"enabled": True, "threshold": "5", "amount": "10"})
    assert status == 200 and reload["needs_card"], reload
    started = await start(gw, org, {"amount": "20.00"})  # auto-reload is on: the card is saved by default
    session = await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}")
    assert session["customer_creation"] == "always" and session["metadata"]["save_card"] == "true", session
    await fake_stripe.pay(started["session_id"])
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    status, reload = await call(gw, "GET", "/api/wallet/auto-reload", org.secrets["owner"])
    assert reload["card_saved"] and not reload["needs_card"], reload
    saved = await gw.state.book.auto_reload(org.wallet_id)
    paid = await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}")
    intent = await fake_stripe.get(f"/v1/payment_intents/{paid['payment_intent']}")
    assert saved.customer_ref == intent["customer"] and saved.payment_method_ref == intent["payment_method"], saved


async def test_a_late_payment_event_after_a_full_refund_credits_nothing_again(stripe_gw, fake_stripe):
    gw = stripe_gw
    org = await make_org(gw, "0")
    started = await start(gw, org, {"amount": "10.00"})
    await fake_stripe.pay(started["session_id"])
    await wait_status(gw, org, started["deposit"]["id"], "completed")
    intent_id = (await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}"))["payment_intent"]
    await fake_stripe.refund(intent_id)
    await wait_status(gw, org, started["deposit"]["id"], "refunded")
    session = await fake_stripe.get(f"/v1/checkout/sessions/{started['session_id']}")
    late = {"id": "evt_late_async_success", "object": "event", "type": "checkout.session.async_payment_succeeded",
            "data": {"object": session}}
    payload = json.dumps(late).encode()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.base_url}/webhooks/stripe", data=payload, headers={
                "Content-Type": "application/json", "Stripe-Signature": fake_stripe.sign(payload, WEBHOOK_SECRET)}) as answer:
            assert answer.status == 200, await answer.text()
    assert (await deposit(gw, org, started["deposit"]["id"]))["status"] == "refunded"
    assert await gw.balance(org.wallet_id) == 0
    check_invariants(await gw.state.book.totals())
