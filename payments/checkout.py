"""A card top-up's start: a pending deposit, then a Stripe Checkout Session for it.

The deposit is written first and named in the session (client_reference_id
and metadata), so whatever happens between the two calls, a session that gets
paid always finds its deposit: no payment can arrive for an order we do not
know. The webhook credits it (payments/webhooks.py); the owner never waits on
us, and Checkout's page is Stripe's.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol
from urllib.parse import urlsplit

from config.payments import NUSD_PER_CENT, StripeSettings
from ledger.money import format_usd
from ledger.owners import Deposit, DepositStatus
from ledger.times import utc_text
from payments.stripe_api import CheckoutRequest, CheckoutSession, StripeFailure
from payments.tiers import Quote


@dataclass(frozen=True)
class TopupRefused:
    """A top-up we will not start: the status, code and parameter a user sees."""

    status: int
    code: str
    message: str
    param: str | None = None


@dataclass(frozen=True)
class StartedCheckout:
    deposit: Deposit
    session: CheckoutSession


class DepositStore(Protocol):
    async def create_deposit(self, deposit: Deposit) -> None: ...
    async def create_keyless(self, deposit: Deposit, recovery_hash: str) -> None: ...
    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit: ...
    async def set_deposit_ref(self, deposit_id: str, external_ref: str) -> None: ...


class CheckoutApi(Protocol):
    async def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession: ...


def credit_expiry(now: datetime, validity_days: int | None) -> str | None:
    """When bought credit expires (topup.credit_validity_days), counted from the purchase; None: never."""
    return None if validity_days is None else utc_text(now + timedelta(days=validity_days))


def new_deposit_id() -> str:
    return f"dep_{secrets.token_hex(8)}"


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of an absolute http(s) URL, lower-cased; None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    return f"{parts.scheme}://{parts.hostname.lower()}" + (f":{port}" if port is not None else "")


def check_return_url(url: str, param: str, allowed: tuple[str, ...]) -> TopupRefused | None:
    """A success or cancel URL must be on the allow-list: Checkout must not send a buyer anywhere else."""
    origin = origin_of(url)
    if origin is None:
        return TopupRefused(400, "invalid_url", f"'{param}' must be an absolute http(s) URL.", param)
    if origin not in allowed:
        listed = ", ".join(allowed) if allowed else "none are configured (stripe.allowed_origins)"
        return TopupRefused(400, "origin_not_allowed",
                            f"'{param}' must be on an allowed origin; {origin} is not. Allowed: {listed}.", param)
    return None


class Checkout:
    def __init__(self, store: DepositStore, api: CheckoutApi, settings: StripeSettings) -> None:
        self._store = store
        self._api = api
        self._settings = settings

    async def start(self, wallet_id: str, quote: Quote, success_url: str, cancel_url: str, *,
                    save_card: bool = False, customer_ref: str | None = None, purpose: str = "topup",
                    validity_days: int | None = None, recovery_hash: str | None = None,
                    now: datetime | None = None) -> StartedCheckout | TopupRefused:
        """recovery_hash: a keyless purchase (its deposit is written with the hash of its recovery code)."""
        for url, param in ((success_url, "success_url"), (cancel_url, "cancel_url")):
            refused = check_return_url(url, param, self._settings.allowed_origins)
            if refused is not None:
                return refused
        now = now or datetime.now(UTC)
        assert quote.payable_cents * NUSD_PER_CENT == quote.payable_nusd, quote
        deposit = Deposit(new_deposit_id(), wallet_id, "card", quote.amount_nusd, format_usd(quote.payable_nusd),
                          self._settings.currency, DepositStatus.PENDING, utc_text(now),
                          discount_nusd=quote.discount_nusd, tier=quote.tier_id, purpose=purpose,
                          paid_cents=quote.payable_cents, credit_expires_at=credit_expiry(now, validity_days))
        if recovery_hash is None:
            await self._store.create_deposit(deposit)
        else:
            await self._store.create_keyless(deposit, recovery_hash)
        expires = now + timedelta(seconds=self._settings.checkout_expires_s)
        request = CheckoutRequest(deposit.deposit_id, wallet_id, quote.payable_cents, format_usd(quote.amount_nusd),
                                  success_url, cancel_url, int(expires.timestamp()), save_card, customer_ref, purpose)
        try:
            session = await self._api.create_checkout_session(request)
        except StripeFailure as exc:
            # No session exists (or none that can be paid: the idempotency key ties a retry to this deposit).
            await self._store.set_deposit_status(deposit.deposit_id, DepositStatus.FAILED)
            return TopupRefused(503 if exc.retryable else 502, exc.code, str(exc))
        await self._store.set_deposit_ref(deposit.deposit_id, session.session_id)
        return StartedCheckout(deposit, session)
