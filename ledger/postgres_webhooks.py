"""Webhook endpoints, the event outbox and balance alerts on Postgres (the contract is ledger/webhooks.py)."""

from __future__ import annotations

import json
import secrets
from datetime import datetime
from typing import Any

import asyncpg

from ledger.errors import UnknownAccount
from ledger.postgres_access import PostgresAccess
from ledger.webhooks import Attempt, BalanceAlert, Endpoint, Event, UsageSummary


def _text(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(row["id"], row["wallet_id"], row["url"], tuple(json.loads(row["events"])), row["secret_sealed"],
                    row["cursor_seq"], row["attempts"], _text(row["created_at"]), _text(row["disabled_at"]))


def _alert(row: Any) -> BalanceAlert:
    return BalanceAlert(row["id"], row["wallet_id"], row["event"], row["threshold_nusd"], row["share_percent"],
                        row["armed"], _text(row["created_at"]))


async def emit_in(conn: asyncpg.Connection, event_id: str, wallet_id: str, type: str, payload: dict[str, Any]) -> bool:
    """Write an event in the caller's transaction (the one that caused it); False if the id exists."""
    status = await conn.execute(
        "INSERT INTO mw_events (id, wallet_id, type, payload) VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING",
        event_id, wallet_id, type, json.dumps(payload))
    return bool(status == "INSERT 0 1")


async def follow_top_up(conn: asyncpg.Connection, wallet_id: str, credited_nusd: int) -> None:
    """Share-of-top-up alerts take their threshold from this top-up (before the credit re-arms them)."""
    await conn.execute("UPDATE mw_balance_alerts SET threshold_nusd = $2::bigint * share_percent / 100"
                       " WHERE wallet_id = $1 AND share_percent IS NOT NULL", wallet_id, credited_nusd)


def new_event_id() -> str:
    return f"evt_{secrets.token_hex(16)}"


class PostgresWebhooks(PostgresAccess):
    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        async def create(conn: asyncpg.Connection) -> Endpoint:
            if await conn.fetchval("SELECT 1 FROM mw_accounts WHERE id = $1 AND kind = 'wallet'", endpoint.wallet_id) is None:
                raise UnknownAccount(f"no wallet {endpoint.wallet_id!r}")
            row = await conn.fetchrow(
                "INSERT INTO mw_webhook_endpoints (id, wallet_id, url, events, secret_sealed, cursor_seq)"
                " VALUES ($1, $2, $3, $4::jsonb, $5, (SELECT COALESCE(MAX(seq), 0) FROM mw_events)) RETURNING *",
                endpoint.endpoint_id, endpoint.wallet_id, endpoint.url, json.dumps(list(endpoint.events)),
                endpoint.secret_sealed)
            if "wallet.empty" in endpoint.events and not await conn.fetchval(
                    "SELECT 1 FROM mw_balance_alerts WHERE wallet_id = $1 AND event = 'wallet.empty'", endpoint.wallet_id):
                await conn.execute("INSERT INTO mw_balance_alerts (id, wallet_id, event, threshold_nusd, armed)"
                                   " SELECT $1, $2, 'wallet.empty', 1, balance_nusd >= 1 FROM mw_accounts WHERE id = $2",
                                   f"alert_{secrets.token_hex(8)}", endpoint.wallet_id)
            return _endpoint(row)

        return await self._atomic(create)

    async def endpoints(self, wallet_id: str) -> list[Endpoint]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT * FROM mw_webhook_endpoints WHERE wallet_id = $1 AND disabled_at IS NULL ORDER BY created_at, id",
            wallet_id))
        return [_endpoint(r) for r in found]

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = await self._with(lambda conn: conn.fetchrow("SELECT * FROM mw_webhook_endpoints WHERE id = $1", endpoint_id))
        return None if row is None else _endpoint(row)

    async def disable_endpoint(self, endpoint_id: str) -> bool:
        status = await self._with(lambda conn: conn.execute(
            "UPDATE mw_webhook_endpoints SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL", endpoint_id))
        return bool(status == "UPDATE 1")

    async def emit_event(self, event_id: str, wallet_id: str, type: str, payload: dict[str, Any]) -> bool:
        return await self._with(lambda conn: emit_in(conn, event_id, wallet_id, type, payload))

    async def claim_endpoints(self, limit: int, lease_s: float) -> list[Endpoint]:
        found = await self._with(lambda conn: conn.fetch(
            "UPDATE mw_webhook_endpoints SET lease_until = now() + make_interval(secs => $2) WHERE id IN"
            " (SELECT id FROM mw_webhook_endpoints WHERE disabled_at IS NULL AND next_attempt_at <= now()"
            "  AND (lease_until IS NULL OR lease_until < now()) ORDER BY next_attempt_at LIMIT $1"
            "  FOR UPDATE SKIP LOCKED) RETURNING *", limit, lease_s))
        return [_endpoint(r) for r in found]

    async def next_event(self, endpoint: Endpoint, settled_s: float) -> Event | None:
        row = await self._with(lambda conn: conn.fetchrow(
            "SELECT * FROM mw_events WHERE wallet_id = $1 AND seq > $2 AND type = ANY($3::text[])"
            " AND created_at <= clock_timestamp() - make_interval(secs => $4) ORDER BY seq LIMIT 1",
            endpoint.wallet_id, endpoint.cursor_seq, list(endpoint.events), settled_s))
        if row is None:
            return None
        return Event(row["seq"], row["id"], row["wallet_id"], row["type"], json.loads(row["payload"]),
                     _text(row["created_at"]) or "")

    async def record_attempt(self, endpoint_id: str, event: Event, attempt: int, outcome: str, status_code: int | None,
                             error: str | None, duration_ms: float, retry_in_s: float | None) -> None:
        async def record(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO mw_webhook_attempts (endpoint_id, event_id, attempt, outcome, status_code, error,"
                " duration_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                endpoint_id, event.event_id, attempt, outcome, status_code, error, duration_ms)
            if retry_in_s is None:  # delivered or given up: on to the next event
                await conn.execute("UPDATE mw_webhook_endpoints SET cursor_seq = GREATEST(cursor_seq, $2), attempts = 0"
                                   " WHERE id = $1", endpoint_id, event.seq)
            else:
                await conn.execute(
                    "UPDATE mw_webhook_endpoints SET attempts = attempts + 1, lease_until = NULL,"
                    " next_attempt_at = now() + make_interval(secs => $2) WHERE id = $1", endpoint_id, retry_in_s)

        await self._atomic(record)

    async def release_endpoint(self, endpoint_id: str, next_in_s: float) -> None:
        await self._with(lambda conn: conn.execute(
            "UPDATE mw_webhook_endpoints SET lease_until = NULL, next_attempt_at = GREATEST(next_attempt_at,"
            " now() + make_interval(secs => $2)) WHERE id = $1", endpoint_id, next_in_s))

    async def attempts(self, endpoint_id: str, limit: int) -> list[Attempt]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT * FROM mw_webhook_attempts WHERE endpoint_id = $1 ORDER BY id DESC LIMIT $2", endpoint_id, limit))
        return [Attempt(r["id"], r["endpoint_id"], r["event_id"], r["attempt"], r["outcome"], r["status_code"],
                        r["error"], r["duration_ms"], _text(r["created_at"]) or "") for r in found]

    async def create_alert(self, alert: BalanceAlert) -> BalanceAlert:
        async def create(conn: asyncpg.Connection) -> BalanceAlert:
            balance = await conn.fetchval("SELECT balance_nusd FROM mw_accounts WHERE id = $1 AND kind = 'wallet'",
                                          alert.wallet_id)
            if balance is None:
                raise UnknownAccount(f"no wallet {alert.wallet_id!r}")
            row = await conn.fetchrow(
                "INSERT INTO mw_balance_alerts (id, wallet_id, event, threshold_nusd, share_percent, armed)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *", alert.alert_id, alert.wallet_id, alert.event,
                alert.threshold_nusd, alert.share_percent, balance >= alert.threshold_nusd)
            return _alert(row)

        return await self._atomic(create)

    async def alerts(self, wallet_id: str) -> list[BalanceAlert]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT * FROM mw_balance_alerts WHERE wallet_id = $1 ORDER BY created_at, id", wallet_id))
        return [_alert(r) for r in found]

    async def delete_alert(self, alert_id: str) -> bool:
        status = await self._with(lambda conn: conn.execute("DELETE FROM mw_balance_alerts WHERE id = $1", alert_id))
        return bool(status == "DELETE 1")

    async def wallets_subscribed(self, event_type: str) -> list[str]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT DISTINCT wallet_id FROM mw_webhook_endpoints WHERE disabled_at IS NULL AND events ? $1", event_type))
        return [r[0] for r in found]

    async def usage_summary(self, wallet_id: str, since: datetime, until: datetime) -> UsageSummary:
        row = await self._with(lambda conn: conn.fetchrow(
            "SELECT COUNT(*), COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_nusd), 0),"
            " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM mw_usage"
            " WHERE wallet_id = $1 AND created_at >= $2 AND created_at < $3", wallet_id, since, until))
        return UsageSummary(*(int(v) for v in row))
