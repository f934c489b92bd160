"""The calls Meterway makes to Stripe, through the `stripe` library, and the check of its webhooks.

Every call has a timeout and a bounded number of retries (`[stripe]` settings),
and every POST an idempotency key derived from our own id (the deposit), so a
retry, ours or the library's, never charges or opens anything twice. Stripe's
failures come back as `StripeFailure` with a code a user can read; a declined
card is `CardDeclined`, a value the auto-reload acts on, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import stripe

from config.payments import StripeSettings

# Stripe's own limit on an idempotency key.
IDEMPOTENCY_KEY_CHARS_MAX = 255


class StripeFailure(Exception):
    """Stripe could not be reached, refused the call, or answered an error: nothing was done on our side."""

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class SignatureInvalid(Exception):
    """A webhook whose signature or timestamp does not verify: answered 400, nothing changes."""


@dataclass(frozen=True)
class CheckoutSession:
    session_id: str
    url: str
    expires_at: int  # unix seconds, as Stripe gives it


@dataclass(frozen=True)
class CardDeclined:
    payment_intent_id: str | None
    code: str  # Stripe's decline code: card_declined, insufficient_funds, authentication_required, ...
    message: str


@dataclass(frozen=True)
class PaymentStarted:
    payment_intent_id: str
    status: str  # succeeded, processing, requires_action, ...


@dataclass(frozen=True)
class CheckoutRequest:
    deposit_id: str  # our order number: client_reference_id, metadata and the idempotency key
    wallet_id: str
    payable_cents: int
    credited_usd: str  # shown on Stripe's page
    success_url: str
    cancel_url: str
    expires_at: int  # unix seconds
    save_card: bool = False  # setup_future_usage=off_session, for auto-reload
    customer_ref: str | None = None
    purpose: str = "topup"

    def __post_init__(self) -> None:
        assert self.payable_cents > 0, self


class StripeApi:
    """One client for the process; close() at shutdown."""

    def __init__(self, settings: StripeSettings) -> None:
        assert settings.secret_key is not None, "settings refuse stripe.enabled without STRIPE_SECRET_KEY"
        self._settings = settings
        self._http = stripe.AIOHTTPClient(timeout=settings.timeout_s)
        self._client = stripe.StripeClient(
            settings.secret_key.get_secret_value(), base_addresses={"api": settings.api_base},
            max_network_retries=settings.max_retries, http_client=self._http)

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_checkout_session(self, request: CheckoutRequest) -> CheckoutSession:
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": self._settings.currency, "unit_amount": request.payable_cents,
                "product_data": {"name": f"{self._settings.product_name}: {request.credited_usd} USD"}}}],
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "client_reference_id": request.deposit_id,
            "metadata": _metadata(request),
            "payment_intent_data": {"metadata": _metadata(request)},
            "expires_at": request.expires_at,
        }
        if request.customer_ref:
            params["customer"] = request.customer_ref
        elif request.save_card:
            params["customer_creation"] = "always"  # a saved card needs a customer to belong to
        if request.save_card:
            params["payment_intent_data"]["setup_future_usage"] = "off_session"
        session = await self._call(self._client.v1.checkout.sessions.create_async, params,
                                   idempotency_key=f"checkout:{request.deposit_id}")
        return CheckoutSession(session.id, session.url or "", int(session.expires_at))

    async def session(self, session_id: str) -> dict[str, Any]:
        """The session as Stripe has it now: a webhook's copy may be older than the truth."""
        found = await self._call(self._client.v1.checkout.sessions.retrieve_async, session_id)
        data: dict[str, Any] = found.to_dict()
        return data

    async def payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        found = await self._call(self._client.v1.payment_intents.retrieve_async, payment_intent_id)
        data: dict[str, Any] = found.to_dict()
        return data

    async def charge_saved_card(self, deposit_id: str, wallet_id: str, customer_ref: str, payment_method_ref: str,
                                amount_cents: int) -> PaymentStarted | CardDeclined:
        """An off-session charge of a saved card; its webhook credits it. Declines are values."""
        assert amount_cents > 0, amount_cents
        metadata = {"deposit_id": deposit_id, "wallet_id": wallet_id, "purpose": "auto_reload"}
        params: dict[str, Any] = {"amount": amount_cents, "currency": self._settings.currency, "customer": customer_ref,
                                  "payment_method": payment_method_ref, "off_session": True, "confirm": True,
                                  "metadata": metadata}
        try:
            intent = await self._call(self._client.v1.payment_intents.create_async, params,
                                      idempotency_key=f"auto_reload:{deposit_id}", declines=True)
        except stripe.CardError as exc:
            error = exc.error
            intent_id = getattr(getattr(error, "payment_intent", None), "id", None) if error else None
            return CardDeclined(intent_id, (exc.code or "card_declined"), exc.user_message or str(exc))
        return PaymentStarted(intent.id, intent.status)

    def verify(self, payload: bytes, signature: str | None) -> stripe.Event:
        """The event, if its signature and timestamp verify with the webhook secret; else SignatureInvalid."""
        secret = self._settings.webhook_secret
        assert secret is not None, "settings refuse stripe.enabled without STRIPE_WEBHOOK_SECRET"
        if not signature:
            raise SignatureInvalid("missing Stripe-Signature header")
        try:
            event: stripe.Event = stripe.Webhook.construct_event(payload, signature, secret.get_secret_value(),
                                                                 tolerance=self._settings.webhook_tolerance_s)
            return event
        except stripe.SignatureVerificationError as exc:
            raise SignatureInvalid(str(exc).split("\n")[0]) from None
        except ValueError as exc:  # the body is not JSON
            raise SignatureInvalid(f"the payload is not an event: {exc}") from None

    async def _call(self, method: Any, *args: Any, idempotency_key: str | None = None, declines: bool = False) -> Any:
        options: dict[str, Any] = {}
        if idempotency_key is not None:
            assert len(idempotency_key) <= IDEMPOTENCY_KEY_CHARS_MAX, idempotency_key
            options["idempotency_key"] = idempotency_key
        try:
            return await method(*args, options=options) if options else await method(*args)
        except stripe.CardError:
            if declines:
                raise
            raise StripeFailure("card_declined", "The card was declined.", retryable=False) from None
        except (stripe.APIConnectionError, stripe.RateLimitError) as exc:
            raise StripeFailure("payments_unavailable", f"Stripe could not be reached: {type(exc).__name__}",
                                retryable=True) from None
        except stripe.AuthenticationError:
            raise StripeFailure("payments_misconfigured", "Stripe refused our secret key.", retryable=False) from None
        except stripe.InvalidRequestError as exc:
            raise StripeFailure("payments_refused", f"Stripe refused the request: {exc.user_message or exc}",
                                retryable=False) from None
        except stripe.StripeError as exc:  # APIError (5xx), IdempotencyError, PermissionError, ...
            status = exc.http_status or 0
            raise StripeFailure("payments_unavailable" if status >= 500 else "payments_refused",
                                f"Stripe answered {status or 'an error'}: {exc.user_message or type(exc).__name__}",
                                retryable=status >= 500) from None


def _metadata(request: CheckoutRequest) -> dict[str, str]:
    return {"deposit_id": request.deposit_id, "wallet_id": request.wallet_id, "purpose": request.purpose,
            "save_card": "true" if request.save_card else "false"}
