"""Webhook endpoints, the event outbox and balance alerts: what the book promises (both dialects).

Every event a wallet's owners may hear of is a row of mw_events, written in
the transaction that caused it: a deposit's credit (deposit.completed), a
declined auto-reload (auto_reload.failed), a balance falling below an armed
alert (a trigger on the balance: wallet.balance_low, wallet.empty). Events
the gateway decides on (cap.reached, key.limit_reached, usage.daily_summary)
are written by emit_event(), idempotent by event id so each fires once.

Each endpoint reads the outbox in order from its own cursor: an event is
attempted until it is delivered or given up on, and only then the next one.
Endpoints are leased to one gateway process at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ledger.owners import Deposit

EVENT_TYPES = ("wallet.balance_low", "wallet.empty", "cap.reached", "key.limit_reached", "deposit.completed",
               "auto_reload.failed", "usage.daily_summary")
ALERT_EVENTS = ("wallet.balance_low", "wallet.empty")
ENDPOINTS_PER_WALLET_MAX = 20
ALERTS_PER_WALLET_MAX = 20
ATTEMPTS_PAGE_MAX = 200


@dataclass(frozen=True)
class Event:
    seq: int
    event_id: str
    wallet_id: str
    type: str
    payload: dict[str, Any]
    created_at: str


@dataclass(frozen=True)
class Endpoint:
    endpoint_id: str
    wallet_id: str
    url: str
    events: tuple[str, ...]
    secret_sealed: str  # the signing secret, sealed with the master key
    cursor_seq: int = 0
    attempts: int = 0  # failed attempts at the next event
    created_at: str | None = None
    disabled_at: str | None = None

    def __post_init__(self) -> None:
        assert self.events and set(self.events) <= set(EVENT_TYPES), self


@dataclass(frozen=True)
class Attempt:
    attempt_id: int
    endpoint_id: str
    event_id: str
    attempt: int
    outcome: str  # delivered, failed (retried later), gave_up
    status_code: int | None
    error: str | None
    duration_ms: float
    created_at: str


@dataclass(frozen=True)
class BalanceAlert:
    alert_id: str
    wallet_id: str
    event: str  # wallet.balance_low or wallet.empty
    threshold_nusd: int  # fires when the balance falls below it
    share_percent: int | None = None  # set: the threshold is this share of the last top-up
    armed: bool = True
    created_at: str | None = None

    def __post_init__(self) -> None:
        assert self.event in ALERT_EVENTS and self.threshold_nusd >= 0, self
        assert self.share_percent is None or 1 <= self.share_percent <= 100, self


@dataclass(frozen=True)
class UsageSummary:
    requests: int
    cost_nusd: int
    charged_nusd: int
    prompt_tokens: int
    completion_tokens: int


def deposit_event(deposit: Deposit) -> dict[str, Any]:
    """deposit.completed's payload: what was credited, and how it was paid."""
    return {"deposit_id": deposit.deposit_id, "amount_nusd": deposit.amount_credited_nusd, "method": deposit.method,
            "purpose": deposit.purpose, "paid_amount": deposit.paid_amount, "paid_currency": deposit.paid_currency}


class Webhooks(Protocol):
    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        """Starts after the wallet's last event (it hears of what happens from now on). UnknownAccount if no wallet."""
        ...

    async def endpoints(self, wallet_id: str) -> list[Endpoint]: ...

    async def endpoint(self, endpoint_id: str) -> Endpoint | None: ...

    async def disable_endpoint(self, endpoint_id: str) -> bool: ...

    async def emit_event(self, event_id: str, wallet_id: str, type: str, payload: dict[str, Any]) -> bool:
        """Write an event in its own transaction; False if one with that id exists already."""
        ...

    async def claim_endpoints(self, limit: int, lease_s: float) -> list[Endpoint]:
        """Endpoints due for delivery and leased to no other process, now leased to the caller."""
        ...

    async def next_event(self, endpoint: Endpoint, settled_s: float) -> Event | None:
        """The next subscribed event after the endpoint's cursor, at least settled_s old (so commits in flight land)."""
        ...

    async def record_attempt(self, endpoint_id: str, event: Event, attempt: int, outcome: str, status_code: int | None,
                             error: str | None, duration_ms: float, retry_in_s: float | None) -> None:
        """Log an attempt; delivered or gave_up move the cursor past the event, failed retries after retry_in_s."""
        ...

    async def release_endpoint(self, endpoint_id: str, next_in_s: float) -> None: ...

    async def attempts(self, endpoint_id: str, limit: int) -> list[Attempt]:
        """The newest attempts first."""
        ...

    async def create_alert(self, alert: BalanceAlert) -> BalanceAlert: ...

    async def alerts(self, wallet_id: str) -> list[BalanceAlert]: ...

    async def delete_alert(self, alert_id: str) -> bool: ...

    async def wallets_subscribed(self, event_type: str) -> list[str]: ...

    async def usage_summary(self, wallet_id: str, since: datetime, until: datetime) -> UsageSummary: ...
