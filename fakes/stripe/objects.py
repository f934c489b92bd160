"""Stripe objects in Stripe's real shape: each starts from Stripe's own published example.

The examples are `stripe-fixtures3.json` from stripe/openapi (kept beside the
project in ../shared/specs/, or at $STRIPE_FIXTURES). Every field Stripe sends
is present; ours only overrides ids, amounts and state. Without the file a
fake still runs, from the few fields below, and says so.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import secrets
import time
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("fakes.stripe")
API_VERSION = "2025-10-29.clover"
_DEFAULT_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "specs" / "stripe-fixtures3.json"
_SKELETONS: dict[str, dict[str, Any]] = {
    "checkout.session": {"object": "checkout.session", "metadata": {}, "livemode": False},
    "event": {"object": "event", "livemode": False, "pending_webhooks": 1, "request": {"id": None}},
    "dispute": {"object": "dispute", "metadata": {}, "livemode": False},
    "charge": {"object": "charge", "metadata": {}, "livemode": False},
}


@cache
def fixtures() -> dict[str, dict[str, Any]]:
    path = Path(os.environ.get("STRIPE_FIXTURES", _DEFAULT_FIXTURES))
    try:
        found: dict[str, dict[str, Any]] = json.loads(path.read_text())["resources"]
        return found
    except OSError:
        log.warning("Stripe's example objects are not at %s: objects carry only the fields the fake sets", path)
        return _SKELETONS


def example(kind: str) -> dict[str, Any]:
    return copy.deepcopy(fixtures().get(kind, _SKELETONS.get(kind, {})))


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}" if prefix == "cs" else f"{prefix}_{secrets.token_hex(12)}"


def checkout_session(params: dict[str, Any], base_url: str) -> dict[str, Any]:
    item = params["line_items"][0]
    unit = int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
    session = example("checkout.session")
    session_id = new_id("cs")
    intent_data = params.get("payment_intent_data") or {}
    session.update({
        "id": session_id, "object": "checkout.session", "mode": params.get("mode", "payment"),
        "amount_subtotal": unit, "amount_total": unit, "currency": item["price_data"].get("currency", "usd"),
        "success_url": params.get("success_url"), "cancel_url": params.get("cancel_url"),
        "client_reference_id": params.get("client_reference_id"), "metadata": params.get("metadata") or {},
        "customer": params.get("customer"), "customer_creation": params.get("customer_creation"),
        "customer_details": None, "customer_email": None,
        "created": int(time.time()), "expires_at": int(params.get("expires_at") or time.time() + 86400),
        "livemode": False, "status": "open", "payment_status": "unpaid", "payment_intent": None,
        "setup_intent": None, "subscription": None, "invoice": None, "payment_link": None,
        "url": f"{base_url}/pay/{session_id}", "ui_mode": "hosted", "recovered_from": None,
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "payment_method_types": ["card"],
    })
    session["_payment_intent_data"] = intent_data  # kept for the payment; never sent (see public())
    return session


def public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def event(event_type: str, obj: dict[str, Any]) -> dict[str, Any]:
    envelope = example("event")
    envelope.update({"id": new_id("evt"), "object": "event", "type": event_type, "api_version": API_VERSION,
                     "created": int(time.time()), "livemode": False, "pending_webhooks": 1,
                     "request": {"id": None, "idempotency_key": None}, "data": {"object": public(obj)}})
    return envelope


def dispute(charge: dict[str, Any], amount: int) -> dict[str, Any]:
    found = example("dispute")
    found.update({"id": new_id("dp"), "object": "dispute", "amount": amount, "charge": charge["id"],
                  "currency": charge.get("currency", "usd"), "payment_intent": charge.get("payment_intent"),
                  "created": int(time.time()), "livemode": False, "metadata": {}, "reason": "fraudulent",
                  "status": "needs_response", "is_charge_refundable": False, "balance_transactions": []})
    return found


def charge(found: dict[str, Any], amount_refunded: int) -> dict[str, Any]:
    """localstripe's charge, dressed in Stripe's shape after a refund."""
    out = example("charge")
    out.update(found)
    out.update({"object": "charge", "amount_refunded": amount_refunded,
                "refunded": amount_refunded >= int(found.get("amount") or 0), "livemode": False})
    return out
