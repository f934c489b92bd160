"""Auto-reload: when a settlement takes a wallet below its threshold, charge its saved card once.

The settlement path pays one dict lookup per settled record: the wallets
with auto-reload on are cached (refreshed every `topup.auto_reload_refresh_s`).
A wallet below its threshold starts a background attempt; the ledger's atomic
claim (`claim_auto_reload`) lets one attempt in flight per wallet across every
process. The charge is an off-session PaymentIntent whose idempotency key is
the deposit id; it is credited by its webhook (and at once, idempotently, when
Stripe answers `succeeded` straight away). A declined card pauses auto-reload
and leaves the owner a notification.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from config.payments import NUSD_PER_CENT
from ledger.book import SettleResult, UsageRecord
from ledger.money import format_usd
from ledger.owners import Deposit, DepositStatus
from ledger.payments import AutoReload
from ledger.times import utc_text
from payments.checkout import credit_expiry, new_deposit_id
from payments.stripe_api import CardDeclined, PaymentStarted, StripeFailure

log = logging.getLogger("meterway.auto_reload")


class ReloadStore(Protocol):
    async def enabled_auto_reloads(self) -> list[AutoReload]: ...
    async def claim_auto_reload(self, wallet_id: str, deposit: Deposit) -> bool: ...
    async def finish_auto_reload(self, wallet_id: str, deposit_id: str, declined_reason: str | None) -> None: ...
    async def set_deposit_status(self, deposit_id: str, status: DepositStatus) -> Deposit: ...


class ReloadApi(Protocol):
    async def charge_saved_card(self, deposit_id: str, wallet_id: str, customer_ref: str, payment_method_ref: str,
                                amount_cents: int) -> PaymentStarted | CardDeclined: ...


@dataclass(frozen=True)
class ReloadAttempt:
    wallet_id: str
    deposit_id: str | None  # None: another attempt was in flight, or auto-reload is off or paused
    outcome: str  # "started", "succeeded", "declined", "not_claimed", "unavailable"


class AutoReloader:
    def __init__(self, store: ReloadStore, api: ReloadApi, refresh_s: float, tasks_max: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._api = api
        self._refresh_s = refresh_s
        self._tasks_max = tasks_max
        self._clock = clock
        self._thresholds: dict[str, int] = {}
        self._loaded_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[ReloadAttempt]] = {}
        self.attempts: list[ReloadAttempt] = []  # the last few, for tests and the logs
        # Credits a charge Stripe answered `succeeded` at once (deposit id, PaymentIntent id);
        # its webhook would credit it too, idempotently. None: wait for the webhook.
        self.on_succeeded: Callable[[str, str], Awaitable[object]] | None = None
        self.validity_days: int | None = None  # topup.credit_validity_days

    def observe(self, records: Sequence[UsageRecord], results: Sequence[SettleResult]) -> None:
        """The Settler's hook after a commit: synchronous and cheap, it only starts tasks."""
        if self._clock() - self._loaded_at > self._refresh_s and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        for record, result in zip(records, results, strict=True):
            threshold = self._thresholds.get(record.wallet_id)
            if threshold is not None and result.balance_nusd < threshold:
                self.trigger(record.wallet_id)

    def trigger(self, wallet_id: str) -> None:
        if wallet_id in self._running or len(self._running) >= self._tasks_max:
            return  # one attempt per wallet per process; the ledger's claim covers the other processes
        task = asyncio.get_running_loop().create_task(self.reload(wallet_id), name=f"meterway-reload-{wallet_id}")
        self._running[wallet_id] = task
        task.add_done_callback(lambda _: self._running.pop(wallet_id, None))

    async def wait_idle(self) -> None:
        while self._running or self._refreshing is not None:
            await asyncio.gather(*self._running.values(), *([self._refreshing] if self._refreshing else []),
                                 return_exceptions=True)

    async def refresh(self) -> None:
        await self._refresh()

    async def _refresh(self) -> None:
        try:
            reloads = await self._store.enabled_auto_reloads()
            self._thresholds = {r.wallet_id: r.threshold_nusd for r in reloads if r.ready}
            self._loaded_at = self._clock()
        except Exception as exc:  # the next settlement tries again; auto-reload is never worth a request
            log.warning("auto-reload settings could not be read: %s", exc)
        finally:
            self._refreshing = None

    async def reload(self, wallet_id: str) -> ReloadAttempt:
        attempt = await self._reload(wallet_id)
        self.attempts = [*self.attempts[-99:], attempt]
        return attempt

    async def _reload(self, wallet_id: str) -> ReloadAttempt:
        reload = next((r for r in await self._store.enabled_auto_reloads() if r.wallet_id == wallet_id), None)
        if reload is None or not reload.ready:
            return ReloadAttempt(wallet_id, None, "not_claimed")
        assert reload.customer_ref and reload.payment_method_ref, reload
        assert reload.amount_nusd % NUSD_PER_CENT == 0 and reload.amount_nusd > 0, reload
        now = datetime.now(UTC)
        deposit = Deposit(new_deposit_id(), wallet_id, "card", reload.amount_nusd, format_usd(reload.amount_nusd),
                          "usd", DepositStatus.PENDING, utc_text(now), purpose="auto_reload",
                          paid_cents=reload.amount_nusd // NUSD_PER_CENT,
                          credit_expires_at=credit_expiry(now, self.validity_days))
        if not await self._store.claim_auto_reload(wallet_id, deposit):
            return ReloadAttempt(wallet_id, None, "not_claimed")
        log.info("auto-reload of %s USD started for wallet %s (deposit %s)", format_usd(reload.amount_nusd),
                 wallet_id, deposit.deposit_id)
        try:
            started = await self._api.charge_saved_card(deposit.deposit_id, wallet_id, reload.customer_ref,
                                                        reload.payment_method_ref, reload.amount_nusd // NUSD_PER_CENT)
        except StripeFailure as exc:
            # Unknown whether Stripe charged (the library already retried under the same
            # idempotency key). The deposit stays pending, so a late payment_intent.succeeded
            # still credits it; the claim is let go so that auto-reload is not stuck.
            await self._store.finish_auto_reload(wallet_id, deposit.deposit_id, None)
            log.warning("auto-reload of wallet %s: Stripe unavailable (%s); deposit %s left pending",
                        wallet_id, exc.code, deposit.deposit_id)
            return ReloadAttempt(wallet_id, deposit.deposit_id, "unavailable")
        if isinstance(started, CardDeclined):
            await self._store.set_deposit_status(deposit.deposit_id, DepositStatus.FAILED)
            await self._store.finish_auto_reload(wallet_id, deposit.deposit_id, f"{started.code}: {started.message}")
            log.warning("auto-reload of wallet %s declined (%s); paused", wallet_id, started.code)
            return ReloadAttempt(wallet_id, deposit.deposit_id, "declined")
        if started.status == "succeeded" and self.on_succeeded is not None:
            await self.on_succeeded(deposit.deposit_id, started.payment_intent_id)
            return ReloadAttempt(wallet_id, deposit.deposit_id, "succeeded")
        return ReloadAttempt(wallet_id, deposit.deposit_id, "started")
