"""Card top-ups wired into the gateway: Stripe's client, Checkout, webhooks and auto-reload, built once.

Nothing here talks HTTP to our clients (gateway/http/api_deposits.py and
webhooks.py do). What it adds to the payments package is the gateway's side
of money coming in: after a credit, the hold store's mirror of the wallet is
brought up to date, so the new money can be spent at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from config.settings import Settings
from ledger.holds import HoldStore, HoldStoreUnavailable
from ledger.store import LedgerStore
from payments.auto_reload import AutoReloader
from payments.checkout import Checkout
from payments.stripe_api import StripeApi
from payments.webhooks import Handled, Webhooks

log = logging.getLogger("meterway.topups")


@dataclass(frozen=True)
class Payments:
    api: StripeApi
    checkout: Checkout
    webhooks: Webhooks
    reloader: AutoReloader
    book: LedgerStore
    holds: HoldStore

    async def apply(self, event: dict[str, object]) -> Handled:
        """One verified webhook event; the wallet it credited or debited is then spendable at once."""
        handled = await self.webhooks.handle(event)
        if handled.wallet_id is not None:
            await sync_mirror(self.book, self.holds, handled.wallet_id)
            if handled.action == "reversed":
                self.reloader.trigger(handled.wallet_id)  # money taken back may cross the threshold too
        return handled

    async def credit_now(self, deposit_id: str, payment_intent_id: str) -> object:
        """An off-session charge Stripe answered `succeeded`: credit it without waiting for the webhook."""
        deposit = await self.book.deposit(deposit_id)
        if deposit is None:
            return None
        outcome = await self.book.complete_deposit(deposit_id, payment_ref=payment_intent_id)
        await self.book.finish_auto_reload(deposit.wallet_id, deposit_id, None)
        await sync_mirror(self.book, self.holds, deposit.wallet_id)
        return outcome

    async def close(self) -> None:
        await self.reloader.wait_idle()
        await self.api.close()


async def sync_mirror(book: LedgerStore, holds: HoldStore, wallet_id: str) -> None:
    wallet = await book.wallet(wallet_id)
    if wallet is None:
        return
    try:
        await holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
    except HoldStoreUnavailable as exc:
        log.warning("wallet %s changed; the hold store is unavailable (%s), its mirror will catch up", wallet_id, exc)


def open_payments(settings: Settings, book: LedgerStore, holds: HoldStore) -> Payments | None:
    """None when Stripe is off: the top-up routes and the webhook then answer 404."""
    if not settings.stripe.enabled:
        return None
    api = StripeApi(settings.stripe)
    reloader = AutoReloader(book, api, settings.topup.auto_reload_refresh_s, settings.topup.auto_reload_tasks_max)
    payments = Payments(api, Checkout(book, api, settings.stripe), Webhooks(book, api), reloader, book, holds)
    reloader.on_succeeded = payments.credit_now
    reloader.validity_days = settings.topup.credit_validity_days
    return payments
