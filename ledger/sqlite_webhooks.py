"""Webhook endpoints, the event outbox and balance alerts on SQLite (the contract is ledger/webhooks.py)."""

from __future__ import annotations

import json
import secrets
import sqlite3
from datetime import datetime
from typing import Any

from ledger.errors import UnknownAccount
from ledger.sqlite_access import SqliteAccess
from ledger.times import utc_text
from ledger.webhooks import Attempt, BalanceAlert, Endpoint, Event, UsageSummary

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _after(seconds: float) -> str:
    """An SQLite time modifier: now plus (or minus) some seconds."""
    return f"{seconds:+.3f} seconds"


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(row["id"], row["wallet_id"], row["url"], tuple(json.loads(row["events"])), row["secret_sealed"],
                    row["cursor_seq"], row["attempts"], row["created_at"], row["disabled_at"])


def _alert(row: Any) -> BalanceAlert:
    return BalanceAlert(row["id"], row["wallet_id"], row["event"], row["threshold_nusd"], row["share_percent"],
                        bool(row["armed"]), row["created_at"])


def emit_in(conn: sqlite3.Connection, event_id: str, wallet_id: str, type: str, payload: dict[str, Any]) -> bool:
    """Write an event in the caller's transaction (the one that caused it); False if the id exists."""
    cur = conn.execute("INSERT OR IGNORE INTO mw_events (id, wallet_id, type, payload) VALUES (?, ?, ?, ?)",
                       (event_id, wallet_id, type, json.dumps(payload)))
    return cur.rowcount == 1


def follow_top_up(conn: sqlite3.Connection, wallet_id: str, credited_nusd: int) -> None:
    """Share-of-top-up alerts take their threshold from this top-up (before the credit re-arms them)."""
    conn.execute("UPDATE mw_balance_alerts SET threshold_nusd = ? * share_percent / 100"
                 " WHERE wallet_id = ? AND share_percent IS NOT NULL", (credited_nusd, wallet_id))


class SqliteWebhooks(SqliteAccess):
    async def create_endpoint(self, endpoint: Endpoint) -> Endpoint:
        def create(conn: sqlite3.Connection) -> Endpoint:
            balance = conn.execute("SELECT balance_nusd FROM mw_accounts WHERE id = ? AND kind = 'wallet'",
                                   (endpoint.wallet_id,)).fetchone()
            if balance is None:
                raise UnknownAccount(f"no wallet {endpoint.wallet_id!r}")
            conn.execute(
                "INSERT INTO mw_webhook_endpoints (id, wallet_id, url, events, secret_sealed, cursor_seq)"
                " VALUES (?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) FROM mw_events))",
                (endpoint.endpoint_id, endpoint.wallet_id, endpoint.url, json.dumps(list(endpoint.events)),
                 endpoint.secret_sealed))
            if "wallet.empty" in endpoint.events and conn.execute(
                    "SELECT 1 FROM mw_balance_alerts WHERE wallet_id = ? AND event = 'wallet.empty'",
                    (endpoint.wallet_id,)).fetchone() is None:
                conn.execute("INSERT INTO mw_balance_alerts (id, wallet_id, event, threshold_nusd, armed)"
                             " VALUES (?, ?, 'wallet.empty', 1, ?)",
                             (f"alert_{secrets.token_hex(8)}", endpoint.wallet_id, int(balance[0] >= 1)))
            return _endpoint(conn.execute("SELECT * FROM mw_webhook_endpoints WHERE id = ?",
                                          (endpoint.endpoint_id,)).fetchone())

        return await self._atomic(create)

    async def endpoints(self, wallet_id: str) -> list[Endpoint]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_webhook_endpoints WHERE wallet_id = ? AND disabled_at IS NULL ORDER BY created_at, id",
            (wallet_id,)).fetchall())
        return [_endpoint(r) for r in found]

    async def endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_webhook_endpoints WHERE id = ?", (endpoint_id,)).fetchone())
        return None if row is None else _endpoint(row)

    async def disable_endpoint(self, endpoint_id: str) -> bool:
        cur = await self._atomic(lambda conn: conn.execute(
            f"UPDATE mw_webhook_endpoints SET disabled_at = {_NOW} WHERE id = ? AND disabled_at IS NULL", (endpoint_id,)))
        return cur.rowcount == 1

    async def emit_event(self, event_id: str, wallet_id: str, type: str, payload: dict[str, Any]) -> bool:
        return await self._atomic(lambda conn: emit_in(conn, event_id, wallet_id, type, payload))

    async def claim_endpoints(self, limit: int, lease_s: float) -> list[Endpoint]:
        def claim(conn: sqlite3.Connection) -> list[Endpoint]:
            ids = [r[0] for r in conn.execute(
                f"SELECT id FROM mw_webhook_endpoints WHERE disabled_at IS NULL AND next_attempt_at <= {_NOW}"
                f" AND (lease_until IS NULL OR lease_until < {_NOW}) ORDER BY next_attempt_at LIMIT ?", (limit,))]
            for endpoint_id in ids:
                conn.execute("UPDATE mw_webhook_endpoints SET lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)"
                             " WHERE id = ?", (_after(lease_s), endpoint_id))
            return [_endpoint(conn.execute("SELECT * FROM mw_webhook_endpoints WHERE id = ?", (i,)).fetchone())
                    for i in ids]

        return await self._atomic(claim)

    async def next_event(self, endpoint: Endpoint, settled_s: float) -> Event | None:
        marks = ", ".join("?" for _ in endpoint.events)
        row = await self._run(lambda conn: conn.execute(
            f"SELECT * FROM mw_events WHERE wallet_id = ? AND seq > ? AND type IN ({marks})"
            " AND created_at <= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) ORDER BY seq LIMIT 1",
            (endpoint.wallet_id, endpoint.cursor_seq, *endpoint.events, _after(-settled_s))).fetchone())
        if row is None:
            return None
        return Event(row["seq"], row["id"], row["wallet_id"], row["type"], json.loads(row["payload"]), row["created_at"])

    async def record_attempt(self, endpoint_id: str, event: Event, attempt: int, outcome: str, status_code: int | None,
                             error: str | None, duration_ms: float, retry_in_s: float | None) -> None:
        def record(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO mw_webhook_attempts (endpoint_id, event_id, attempt, outcome, status_code, error,"
                " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (endpoint_id, event.event_id, attempt, outcome, status_code, error, duration_ms))
            if retry_in_s is None:
                conn.execute("UPDATE mw_webhook_endpoints SET cursor_seq = MAX(cursor_seq, ?), attempts = 0"
                             " WHERE id = ?", (event.seq, endpoint_id))
            else:
                conn.execute("UPDATE mw_webhook_endpoints SET attempts = attempts + 1, lease_until = NULL,"
                             " next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?) WHERE id = ?",
                             (_after(retry_in_s), endpoint_id))

        await self._atomic(record)

    async def release_endpoint(self, endpoint_id: str, next_in_s: float) -> None:
        await self._atomic(lambda conn: conn.execute(
            "UPDATE mw_webhook_endpoints SET lease_until = NULL, next_attempt_at = MAX(next_attempt_at,"
            " strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?)) WHERE id = ?", (_after(next_in_s), endpoint_id)))

    async def attempts(self, endpoint_id: str, limit: int) -> list[Attempt]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_webhook_attempts WHERE endpoint_id = ? ORDER BY id DESC LIMIT ?",
            (endpoint_id, limit)).fetchall())
        return [Attempt(r["id"], r["endpoint_id"], r["event_id"], r["attempt"], r["outcome"], r["status_code"],
                        r["error"], r["duration_ms"], r["created_at"]) for r in found]

    async def create_alert(self, alert: BalanceAlert) -> BalanceAlert:
        def create(conn: sqlite3.Connection) -> BalanceAlert:
            balance = conn.execute("SELECT balance_nusd FROM mw_accounts WHERE id = ? AND kind = 'wallet'",
                                   (alert.wallet_id,)).fetchone()
            if balance is None:
                raise UnknownAccount(f"no wallet {alert.wallet_id!r}")
            conn.execute("INSERT INTO mw_balance_alerts (id, wallet_id, event, threshold_nusd, share_percent, armed)"
                         " VALUES (?, ?, ?, ?, ?, ?)", (alert.alert_id, alert.wallet_id, alert.event,
                                                       alert.threshold_nusd, alert.share_percent,
                                                       int(balance[0] >= alert.threshold_nusd)))
            return _alert(conn.execute("SELECT * FROM mw_balance_alerts WHERE id = ?", (alert.alert_id,)).fetchone())

        return await self._atomic(create)

    async def alerts(self, wallet_id: str) -> list[BalanceAlert]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_balance_alerts WHERE wallet_id = ? ORDER BY created_at, id", (wallet_id,)).fetchall())
        return [_alert(r) for r in found]

    async def delete_alert(self, alert_id: str) -> bool:
        cur = await self._atomic(lambda conn: conn.execute("DELETE FROM mw_balance_alerts WHERE id = ?", (alert_id,)))
        return cur.rowcount == 1

    async def wallets_subscribed(self, event_type: str) -> list[str]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT DISTINCT e.wallet_id FROM mw_webhook_endpoints e, json_each(e.events) j"
            " WHERE e.disabled_at IS NULL AND j.value = ?", (event_type,)).fetchall())
        return [r[0] for r in found]

    async def usage_summary(self, wallet_id: str, since: datetime, until: datetime) -> UsageSummary:
        row = await self._run(lambda conn: conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost_nusd), 0), COALESCE(SUM(charged_nusd), 0),"
            " COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0) FROM mw_usage"
            " WHERE wallet_id = ? AND created_at >= ? AND created_at < ?",
            (wallet_id, utc_text(since), utc_text(until))).fetchone())
        return UsageSummary(*(int(v) for v in row))
