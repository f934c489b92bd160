"""Delivering the event outbox to owners' webhook endpoints: signed, in order per endpoint, retried with backoff.

A background task of each gateway process claims due endpoints (a lease:
one process per endpoint at a time), sends each its next events in order, and
records every attempt. A failure waits backoff_s, doubled per failure up to
backoff_max_s; after attempts_max the event is given up on (the attempt log
says so) and the next one is sent. Nothing here runs on the request path: a
slow or dead endpoint costs this task's time, bounded by concurrency_max.

Each delivery is signed like Stripe's: a header
``Meterway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
keyed with the endpoint's secret (whsec_...), shown once when it is made and
sealed at rest with the master key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from config.webhooks import WebhookSettings
from gateway.money.secrets_box import BoxUnavailable, SecretsBox, Unreadable
from gateway.upstream import Upstream, UpstreamFailed
from ledger.errors import LedgerError
from ledger.money import format_usd
from ledger.store import LedgerStore
from ledger.webhooks import Endpoint, Event

log = logging.getLogger("meterway.webhooks")
SIGNATURE_HEADER = "Meterway-Signature"
SECRET_PREFIX = "whsec_"
SUMMARY_CHECK_S = 60.0  # who wants yesterday's summary is asked at most this often


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_context(endpoint_id: str, wallet_id: str) -> str:
    """What a sealed secret is bound to: it opens for this endpoint of this wallet only."""
    return f"webhook:{endpoint_id}:{wallet_id}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_body(event: Event) -> bytes:
    """What an endpoint receives: the event, its amounts also as USD strings."""
    data = dict(event.payload)
    for name, value in event.payload.items():
        if name.endswith("_nusd") and isinstance(value, int):
            data[name.removesuffix("_nusd") + "_usd"] = format_usd(value)
    return json.dumps({"id": event.event_id, "object": "event", "type": event.type, "created_at": event.created_at,
                       "wallet_id": event.wallet_id, "data": data}).encode()


class Deliverer:
    def __init__(self, store: LedgerStore, upstream: Upstream, box: SecretsBox | BoxUnavailable,
                 settings: WebhookSettings) -> None:
        self._store = store
        self._upstream = upstream
        self._box = box
        self._settings = settings
        self._slots = asyncio.Semaphore(settings.concurrency_max)
        self._summarised: set[str] = set()
        self._summarised_at = float("-inf")

    async def run_forever(self) -> None:
        while True:
            try:
                await self.poll_once()
                await self.summarise_days(datetime.now(UTC))
            except LedgerError as exc:
                log.warning("webhooks: the ledger is unavailable (%s); retrying in %.1f s", exc,
                            self._settings.poll_interval_s)
            await asyncio.sleep(self._settings.poll_interval_s)

    async def poll_once(self) -> int:
        """Deliver to every due endpoint once; how many endpoints were served."""
        s = self._settings
        claimed = await self._store.claim_endpoints(s.endpoints_per_poll_max, s.lease_s)
        await asyncio.gather(*(self._serve(endpoint) for endpoint in claimed))
        return len(claimed)

    async def _serve(self, endpoint: Endpoint) -> None:
        # Let go while the lease surely still holds: another process may take the endpoint after it.
        let_go_at = time.monotonic() + self._settings.lease_s - self._settings.timeout_s
        async with self._slots:
            try:
                for _ in range(self._settings.events_per_claim_max):
                    if time.monotonic() >= let_go_at:
                        break
                    event = await self._store.next_event(endpoint, self._settings.settled_s)
                    if event is None or not await self._attempt(endpoint, event):
                        break
                    endpoint = replace(endpoint, cursor_seq=event.seq, attempts=0)
            finally:
                with contextlib.suppress(LedgerError):
                    await self._store.release_endpoint(endpoint.endpoint_id, self._settings.poll_interval_s)

    async def _attempt(self, endpoint: Endpoint, event: Event) -> bool:
        """Send one event; whether it is behind us (delivered, or given up on)."""
        secret = self._secret(endpoint)
        started = time.perf_counter()
        status, error = None, None
        if not isinstance(secret, Unreadable):
            body = event_body(event)
            headers = {"Content-Type": "application/json", "User-Agent": "Meterway-Webhooks/1",
                       "Meterway-Event-Id": event.event_id, "Meterway-Event-Type": event.type,
                       SIGNATURE_HEADER: sign(secret, int(time.time()), body)}
            reply = await self._upstream.deliver(endpoint.url, body, headers, self._settings.timeout_s,
                                                 self._settings.body_bytes_max)
            if isinstance(reply, UpstreamFailed):
                error = reply.detail[:500]
            else:
                status = reply.status
                error = None if 200 <= status < 300 else f"HTTP {status}: {reply.body[:200].decode('utf-8', 'replace')}"
        else:
            error = secret.reason  # the master key is missing or changed: retried, never given up on for that
        duration_ms = (time.perf_counter() - started) * 1000
        attempt = endpoint.attempts + 1
        if error is None:
            await self._store.record_attempt(endpoint.endpoint_id, event, attempt, "delivered", status, None,
                                             duration_ms, None)
            return True
        gave_up = attempt >= self._settings.attempts_max and not isinstance(secret, Unreadable)
        retry_in = None if gave_up else min(self._settings.backoff_s * 2 ** (attempt - 1), self._settings.backoff_max_s)
        await self._store.record_attempt(endpoint.endpoint_id, event, attempt, "gave_up" if gave_up else "failed",
                                         status, error, duration_ms, retry_in)
        if gave_up:
            log.warning("webhook %s: gave up on event %s after %d attempts: %s", endpoint.endpoint_id,
                        event.event_id, attempt, error)
        return gave_up

    def _secret(self, endpoint: Endpoint) -> str | Unreadable:
        """The endpoint's signing secret, or why it cannot be opened."""
        if isinstance(self._box, BoxUnavailable):
            return Unreadable(f"the master key is unavailable: {self._box.reason}")
        return self._box.open(endpoint.secret_sealed, secret_context(endpoint.endpoint_id, endpoint.wallet_id))

    async def summarise_days(self, now: datetime) -> None:
        """usage.daily_summary for yesterday (UTC), once per wallet that listens for it."""
        if now.hour < self._settings.daily_summary_hour_utc or time.monotonic() - self._summarised_at < SUMMARY_CHECK_S:
            return
        self._summarised_at = time.monotonic()
        day_end = now.replace(hour=0, minute=0, second=0, microsecond=0)
        day = (day_end - timedelta(days=1)).strftime("%Y-%m-%d")
        for wallet_id in await self._store.wallets_subscribed("usage.daily_summary"):
            event_id = f"usage.daily_summary:{wallet_id}:{day}"
            if event_id in self._summarised:
                continue
            summary = await self._store.usage_summary(wallet_id, day_end - timedelta(days=1), day_end)
            payload: dict[str, Any] = {"date": day, "requests": summary.requests, "cost_nusd": summary.cost_nusd,
                                       "charged_nusd": summary.charged_nusd, "prompt_tokens": summary.prompt_tokens,
                                       "completion_tokens": summary.completion_tokens}
            await self._store.emit_event(event_id, wallet_id, "usage.daily_summary", payload)
            if len(self._summarised) > 100_000:
                self._summarised.clear()
            self._summarised.add(event_id)
