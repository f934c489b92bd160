"""Bots, key spend limits and cap rows on SQLite (the contract is ledger/bots.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ledger import owner_rows, rows
from ledger.api_keys import ApiKeyRecord, SpendLimits
from ledger.bots import CONVERSATION_SPENT_SQL, LIMIT_SQL, RELIMIT_ROWS_MAX, SPENT_SQL, Bot
from ledger.caps import CapBalance, CapScope, CapSpec
from ledger.errors import BotExists, BotInUse, UnknownAccount
from ledger.key_rules import KeyRules
from ledger.sqlite_access import SqliteAccess
from ledger.times import utc_text

_SPENT = {scope: sql.replace(":subject", "?") for scope, sql in SPENT_SQL.items()}
_LIMIT = {cap: sql.replace(":subject", "?") for cap, sql in LIMIT_SQL.items()}
_CONVERSATION_SPENT = CONVERSATION_SPENT_SQL.replace(":subject", "?").replace(":conversation", "?")
# The window of a cap's usage (NULL: all time).
_WINDOW = " AND (? IS NULL OR u.created_at >= ?) AND (? IS NULL OR u.created_at < ?)"
_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _bot(row: Any) -> Bot:
    caps = SpendLimits(day_nusd=row["daily_cap_nusd"], month_nusd=row["monthly_cap_nusd"],
                       conversation_nusd=row["conversation_cap_nusd"])
    return Bot(row["id"], row["wallet_id"], row["name"], caps, row["friendly_message"], row["created_at"])


def _live_bot(conn: sqlite3.Connection, bot_id: str) -> Bot | None:
    row = conn.execute("SELECT * FROM mw_bots WHERE id = ? AND deleted_at IS NULL", (bot_id,)).fetchone()
    return None if row is None else _bot(row)


class SqliteBots(SqliteAccess):
    async def create_bot(self, bot: Bot) -> Bot:
        def create(conn: sqlite3.Connection) -> Bot:
            if conn.execute("SELECT 1 FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (bot.wallet_id,)).fetchone() is None:
                raise UnknownAccount(f"no wallet {bot.wallet_id!r}")
            if conn.execute("SELECT 1 FROM mw_bots WHERE wallet_id = ? AND name = ? AND deleted_at IS NULL",
                            (bot.wallet_id, bot.name)).fetchone():
                raise BotExists(f"the wallet already has a bot named {bot.name!r}")
            conn.execute(
                "INSERT INTO mw_bots (id, wallet_id, name, daily_cap_nusd, monthly_cap_nusd, conversation_cap_nusd,"
                " friendly_message) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (bot.bot_id, bot.wallet_id, bot.name, bot.caps.day_nusd, bot.caps.month_nusd,
                 bot.caps.conversation_nusd, bot.friendly_message))
            created = _live_bot(conn, bot.bot_id)
            assert created is not None
            return created

        return await self._atomic(create)

    async def bot(self, bot_id: str) -> Bot | None:
        return await self._run(lambda conn: _live_bot(conn, bot_id))

    async def list_bots(self, wallet_id: str) -> list[Bot]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_bots WHERE wallet_id = ? AND deleted_at IS NULL ORDER BY created_at, id",
            (wallet_id,)).fetchall())
        return [_bot(row) for row in found]

    async def update_bot(self, bot_id: str, caps: SpendLimits, friendly_message: str | None) -> Bot | None:
        def update(conn: sqlite3.Connection) -> Bot | None:
            conn.execute(
                "UPDATE mw_bots SET daily_cap_nusd = ?, monthly_cap_nusd = ?, conversation_cap_nusd = ?,"
                " friendly_message = ? WHERE id = ? AND deleted_at IS NULL",
                (caps.day_nusd, caps.month_nusd, caps.conversation_nusd, friendly_message, bot_id))
            return _live_bot(conn, bot_id)

        return await self._atomic(update)

    async def delete_bot(self, bot_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM mw_keys WHERE bot_id = ? AND revoked_at IS NULL LIMIT 1", (bot_id,)).fetchone():
                raise BotInUse(f"bot {bot_id!r} still has active keys")
            cur = conn.execute(f"UPDATE mw_bots SET deleted_at = {_NOW} WHERE id = ? AND deleted_at IS NULL", (bot_id,))
            return cur.rowcount == 1

        return await self._atomic(delete)

    async def set_key_limits(self, key_id: str, limits: SpendLimits, rules: KeyRules | None = None) -> ApiKeyRecord | None:
        def update(conn: sqlite3.Connection) -> ApiKeyRecord | None:
            cur = conn.execute(
                "UPDATE mw_keys SET total_limit_nusd = ?, daily_limit_nusd = ?, monthly_limit_nusd = ?, rpm_max = ?,"
                " tpm_max = ?, parallel_max = ?, ip_allow = ? WHERE id = ?",
                (limits.total_nusd, limits.day_nusd, limits.month_nusd, *rows.rule_values(rules), key_id))
            if cur.rowcount != 1:
                return None
            row = conn.execute(f"{rows.KEY_SELECT} WHERE k.id = ?", (key_id,)).fetchone()
            return rows.key_record(dict(row))

        return await self._atomic(update)

    async def open_cap(self, spec: CapSpec) -> CapBalance:
        def open_row(conn: sqlite3.Connection) -> CapBalance:
            row = conn.execute(_LIMIT[(spec.scope, spec.window)], (spec.subject_id,)).fetchone()
            limit = None if row is None else row[0]
            found = conn.execute("SELECT * FROM mw_spend_caps WHERE id = ?", (spec.cap_id,)).fetchone()
            if found is None:
                conn.execute("INSERT INTO mw_spend_caps (id, limit_nusd, spent_nusd, version) VALUES (?, ?, ?, 1)",
                             (spec.cap_id, limit, _spent(conn, spec)))
            elif found["limit_nusd"] != limit:
                # A row kept while its subject had no limit stopped counting: count again from the usage.
                spent = found["spent_nusd"] if found["limit_nusd"] is not None else _spent(conn, spec)
                conn.execute("UPDATE mw_spend_caps SET limit_nusd = ?, spent_nusd = ?, version = version + 1"
                             " WHERE id = ?", (limit, spent, spec.cap_id))
            row = conn.execute("SELECT * FROM mw_spend_caps WHERE id = ?", (spec.cap_id,)).fetchone()
            return owner_rows.cap(row)

        return await self._atomic(open_row)

    async def relimit_caps(self, prefix: str, limits: dict[str, int | None]) -> list[CapBalance]:
        def update(conn: sqlite3.Connection) -> list[CapBalance]:
            changed: list[CapBalance] = []
            for marker, limit in limits.items():
                start = prefix + marker
                ids = [r[0] for r in conn.execute(
                    "SELECT id FROM mw_spend_caps WHERE substr(id, 1, length(?)) = ? AND limit_nusd IS NOT ? LIMIT ?",
                    (start, start, limit, RELIMIT_ROWS_MAX)).fetchall()]
                for cap_id in ids:
                    conn.execute("UPDATE mw_spend_caps SET limit_nusd = ?, version = version + 1 WHERE id = ?",
                                 (limit, cap_id))
                    changed.append(owner_rows.cap(conn.execute(
                        "SELECT * FROM mw_spend_caps WHERE id = ?", (cap_id,)).fetchone()))
            return changed

        return await self._atomic(update)


def _spent(conn: sqlite3.Connection, spec: CapSpec) -> int:
    if spec.scope is CapScope.CONVERSATION:
        return int(conn.execute(_CONVERSATION_SPENT, (spec.subject_id, spec.conversation_id)).fetchone()[0])
    since = None if spec.since is None else utc_text(spec.since)
    until = None if spec.until is None else utc_text(spec.until)
    found = conn.execute(_SPENT[spec.scope] + _WINDOW, (spec.subject_id, since, since, until, until)).fetchone()
    return int(found[0])
