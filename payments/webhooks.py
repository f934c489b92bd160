"""Stripe's webhook events, applied exactly once whatever order and however often they arrive.

Each effect is idempotent on its own: a deposit is credited once (by its
posting id), a card refund or dispute is taken back once (by Stripe's object
id), a status only moves forward. The processed event ids are stored after
the effect, so a duplicate is answered at once, and a crash between effect
and record only makes the next delivery re-apply an idempotent effect.

Checkout events act on the session as Stripe has it now (re-fetched), not on
the event's copy: an old `completed`/`unpaid` arriving after the
`async_payment_succeeded` must not hold a paid deposit back.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ledger.book import TransferKind, TransferOutcome
from ledger.owners import Deposit, DepositNotPending, DepositStatus

log = logging.getLogger("meterway.webhooks")
# A deposit we stopped waiting for, that a late payment may still complete; a refunded one was credited before.
GIVEN_UP = frozenset({DepositStatus.EXPIRED, DepositStatus.FAILED})


@dataclass(frozen=True)
class Handled:
    event_id: str
    event_type: str
    action: str  # credited, already_credited, pending, expired, failed, reversed, duplicate, ignored
    wallet_id: str | None = None  # a wallet whose balance changed: the gateway refreshes its hold mirror
    deposit_id: str | None = None


class WebhookStore(Protocol):
    async def event_seen(self, event_id: str) -> bool: ...
    async def record_event(self, event_id: str, event_type: str) -> None: ...
    async def deposit(self, deposit_id: str) -> Deposit | None: ...
    async def deposit_by_payment_ref(self, payment_ref: str) -> Deposit | None: ...
    async def complete_deposit(self, deposit_id: str, *, payment_ref: str | None = None,
                               customer_ref: str | None = None) -> TransferOutcome: ...
    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit: ...
    async def save_payment_method(self, wallet_id: str, customer_ref: str, payment_method_ref: str) -> None: ...
    async def finish_auto_reload(self, wallet_id: str, deposit_id: str, declined_reason: str | None) -> None: ...
    async def reverse_deposit_upto(self, deposit_id: str, reversal_id: str, kind: TransferKind,
                                   paid_cents_taken_back: int) -> Any: ...


class WebhookApi(Protocol):
    async def session(self, session_id: str) -> dict[str, Any]: ...
    async def payment_intent(self, payment_intent_id: str) -> dict[str, Any]: ...


class Webhooks:
    def __init__(self, store: WebhookStore, api: WebhookApi) -> None:
        self._store = store
        self._api = api

    async def handle(self, event: Mapping[str, Any]) -> Handled:
        event_id, event_type = str(event["id"]), str(event["type"])
        if await self._store.event_seen(event_id):
            return Handled(event_id, event_type, "duplicate")
        obj = event["data"]["object"]
        handler = _HANDLERS.get(event_type)
        handled = Handled(event_id, event_type, "ignored") if handler is None else await handler(self, event, obj)
        await self._store.record_event(event_id, event_type)
        log.info("stripe event %s (%s): %s%s", event_id, event_type, handled.action,
                 f" deposit {handled.deposit_id}" if handled.deposit_id else "")
        return handled

    # --- Checkout -----------------------------------------------------------------

    async def _checkout(self, event: Mapping[str, Any], obj: Mapping[str, Any]) -> Handled:
        event_id, event_type = str(event["id"]), str(event["type"])
        deposit = await self._deposit_of_session(obj)
        if deposit is None:
            return Handled(event_id, event_type, "ignored")
        session = await self._api.session(str(obj["id"]))  # the truth now, not the event's copy
        if session.get("payment_status") in ("paid", "no_payment_required") and session.get("status") == "complete":
            return await self._credit_session(event_id, event_type, deposit, session)
        if event_type == "checkout.session.async_payment_failed":
            return await self._move(event_id, event_type, deposit, DepositStatus.FAILED)
        if session.get("status") == "expired":
            return await self._move(event_id, event_type, deposit, DepositStatus.EXPIRED)
        return Handled(event_id, event_type, "pending", deposit_id=deposit.deposit_id)  # an async method: wait

    async def _credit_session(self, event_id: str, event_type: str, deposit: Deposit,
                              session: Mapping[str, Any]) -> Handled:
        intent_id = _id_of(session.get("payment_intent"))
        customer = _id_of(session.get("customer"))
        outcome = await self._credit(deposit, intent_id, customer)
        if intent_id and customer and (session.get("metadata") or {}).get("save_card") == "true":
            intent = await self._api.payment_intent(intent_id)
            method = _id_of(intent.get("payment_method"))
            if method:
                await self._store.save_payment_method(deposit.wallet_id, customer, method)
        action = "credited" if outcome is TransferOutcome.CREATED else "already_credited"
        return Handled(event_id, event_type, action, deposit.wallet_id, deposit.deposit_id)

    async def _credit(self, deposit: Deposit, intent_id: str | None, customer: str | None) -> TransferOutcome:
        try:
            return await self._store.complete_deposit(deposit.deposit_id, payment_ref=intent_id, customer_ref=customer)
        except DepositNotPending:
            current = await self._store.deposit(deposit.deposit_id)
            if current is None or current.status not in GIVEN_UP:
                return TransferOutcome.EXISTS  # credited before (and perhaps taken back since): never twice
            # Stripe took the money for a deposit we had given up on: still credit it, never lose a payment.
            log.warning("deposit %s was paid after being marked %s; crediting it", deposit.deposit_id,
                        current.status.value)
            await self._store.set_deposit_status(deposit.deposit_id, DepositStatus.PENDING)
            return await self._store.complete_deposit(deposit.deposit_id, payment_ref=intent_id, customer_ref=customer)

    async def _move(self, event_id: str, event_type: str, deposit: Deposit, status: DepositStatus) -> Handled:
        current = await self._store.deposit(deposit.deposit_id)
        if current is not None and current.status is DepositStatus.PENDING:
            await self._store.set_deposit_status(deposit.deposit_id, status)
            return Handled(event_id, event_type, status.value, deposit_id=deposit.deposit_id)
        return Handled(event_id, event_type, "ignored", deposit_id=deposit.deposit_id)  # forward only

    async def _deposit_of_session(self, session: Mapping[str, Any]) -> Deposit | None:
        deposit_id = session.get("client_reference_id") or (session.get("metadata") or {}).get("deposit_id")
        deposit = await self._store.deposit(str(deposit_id)) if deposit_id else None
        if deposit is None or deposit.external_ref not in (None, session.get("id")):
            log.warning("checkout session %s names no deposit of ours (%s)", session.get("id"), deposit_id)
            return None
        return deposit

    # --- off-session payments (auto-reload) ---------------------------------------

    async def _intent(self, event: Mapping[str, Any], obj: Mapping[str, Any]) -> Handled:
        event_id, event_type = str(event["id"]), str(event["type"])
        metadata = obj.get("metadata") or {}
        if metadata.get("purpose") != "auto_reload" or not metadata.get("deposit_id"):
            return Handled(event_id, event_type, "ignored")  # a Checkout payment: its session's events credit it
        deposit = await self._store.deposit(str(metadata["deposit_id"]))
        if deposit is None:
            return Handled(event_id, event_type, "ignored")
        if event_type == "payment_intent.succeeded":
            outcome = await self._credit(deposit, str(obj["id"]), _id_of(obj.get("customer")))
            await self._store.finish_auto_reload(deposit.wallet_id, deposit.deposit_id, None)
            action = "credited" if outcome is TransferOutcome.CREATED else "already_credited"
            return Handled(event_id, event_type, action, deposit.wallet_id, deposit.deposit_id)
        error = obj.get("last_payment_error") or {}
        reason = f"{error.get('code') or 'payment_failed'}: {error.get('message') or 'the card was declined'}"
        handled = await self._move(event_id, event_type, deposit, DepositStatus.FAILED)
        await self._store.finish_auto_reload(deposit.wallet_id, deposit.deposit_id, reason)
        return handled

    # --- money taken back: card refunds and disputes --------------------------------

    async def _refunded(self, event: Mapping[str, Any], obj: Mapping[str, Any]) -> Handled:
        # amount_refunded is the charge's running total: take back up to it, so duplicates
        # and out-of-order partial refunds add up to exactly what Stripe refunded.
        return await self._take_back(event, obj, TransferKind.CARD_REFUND, f"card_refund:{obj['id']}",
                                     int(obj.get("amount_refunded") or 0))

    async def _disputed(self, event: Mapping[str, Any], obj: Mapping[str, Any]) -> Handled:
        return await self._take_back(event, obj, TransferKind.CHARGEBACK, f"chargeback:{obj['id']}",
                                     int(obj.get("amount") or 0))

    async def _take_back(self, event: Mapping[str, Any], obj: Mapping[str, Any], kind: TransferKind,
                         reversal_id: str, cents: int) -> Handled:
        event_id, event_type = str(event["id"]), str(event["type"])
        intent_id = _id_of(obj.get("payment_intent"))
        deposit = await self._store.deposit_by_payment_ref(intent_id) if intent_id else None
        if deposit is None or cents <= 0:
            return Handled(event_id, event_type, "ignored")
        await self._store.reverse_deposit_upto(deposit.deposit_id, reversal_id, kind, cents)
        return Handled(event_id, event_type, "reversed", deposit.wallet_id, deposit.deposit_id)


def _id_of(value: object) -> str | None:
    """Stripe fields are an id or, when expanded, the object: the id either way."""
    if isinstance(value, Mapping):
        found = value.get("id")
        return str(found) if found else None
    return str(value) if value else None


_HANDLERS = {
    "checkout.session.completed": Webhooks._checkout,
    "checkout.session.async_payment_succeeded": Webhooks._checkout,
    "checkout.session.async_payment_failed": Webhooks._checkout,
    "checkout.session.expired": Webhooks._checkout,
    "payment_intent.succeeded": Webhooks._intent,
    "payment_intent.payment_failed": Webhooks._intent,
    "charge.refunded": Webhooks._refunded,
    "charge.dispute.created": Webhooks._disputed,
}
