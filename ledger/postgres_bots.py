"""Bots, key spend limits and cap rows on Postgres (the contract is ledger/bots.py)."""

from __future__ import annotations

from typing import Any

import asyncpg

from ledger import owner_rows, rows
from ledger.api_keys import ApiKeyRecord, SpendLimits
from ledger.bots import CONVERSATION_SPENT_SQL, LIMIT_SQL, RELIMIT_ROWS_MAX, SPENT_SQL, Bot
from ledger.caps import CapBalance, CapScope, CapSpec
from ledger.errors import BotExists, BotInUse, UnknownAccount
from ledger.key_rules import KeyRules
from ledger.postgres_access import PostgresAccess
from ledger.postgres_postings import text_times

_SPENT = {scope: sql.replace(":subject", "$1") for scope, sql in SPENT_SQL.items()}
_LIMIT = {cap: sql.replace(":subject", "$1") for cap, sql in LIMIT_SQL.items()}
_CONVERSATION_SPENT = CONVERSATION_SPENT_SQL.replace(":subject", "$1").replace(":conversation", "$2")
# The window of a cap's usage (NULL: all time).
_WINDOW = " AND ($2::timestamptz IS NULL OR u.created_at >= $2) AND ($3::timestamptz IS NULL OR u.created_at < $3)"


def _bot(row: Any) -> Bot:
    row = text_times(row)
    caps = SpendLimits(day_nusd=row["daily_cap_nusd"], month_nusd=row["monthly_cap_nusd"],
                       conversation_nusd=row["conversation_cap_nusd"])
    return Bot(row["id"], row["wallet_id"], row["name"], caps, row["friendly_message"], row["created_at"])


class PostgresBots(PostgresAccess):
    async def create_bot(self, bot: Bot) -> Bot:
        async def create(conn: asyncpg.Connection) -> Bot:
            if await conn.fetchval("SELECT 1 FROM mw_accounts WHERE id = $1 AND kind = 'wallet'", bot.wallet_id) is None:
                raise UnknownAccount(f"no wallet {bot.wallet_id!r}")
            if await conn.fetchval("SELECT 1 FROM mw_bots WHERE wallet_id = $1 AND name = $2 AND deleted_at IS NULL",
                                   bot.wallet_id, bot.name):
                raise BotExists(f"the wallet already has a bot named {bot.name!r}")
            row = await conn.fetchrow(
                "INSERT INTO mw_bots (id, wallet_id, name, daily_cap_nusd, monthly_cap_nusd, conversation_cap_nusd,"
                " friendly_message) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                bot.bot_id, bot.wallet_id, bot.name, bot.caps.day_nusd, bot.caps.month_nusd,
                bot.caps.conversation_nusd, bot.friendly_message)
            return _bot(row)

        return await self._atomic(create)

    async def bot(self, bot_id: str) -> Bot | None:
        row = await self._with(lambda conn: conn.fetchrow(
            "SELECT * FROM mw_bots WHERE id = $1 AND deleted_at IS NULL", bot_id))
        return None if row is None else _bot(row)

    async def list_bots(self, wallet_id: str) -> list[Bot]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT * FROM mw_bots WHERE wallet_id = $1 AND deleted_at IS NULL ORDER BY created_at, id", wallet_id))
        return [_bot(row) for row in found]

    async def update_bot(self, bot_id: str, caps: SpendLimits, friendly_message: str | None) -> Bot | None:
        row = await self._with(lambda conn: conn.fetchrow(
            "UPDATE mw_bots SET daily_cap_nusd = $2, monthly_cap_nusd = $3, conversation_cap_nusd = $4,"
            " friendly_message = $5 WHERE id = $1 AND deleted_at IS NULL RETURNING *",
            bot_id, caps.day_nusd, caps.month_nusd, caps.conversation_nusd, friendly_message))
        return None if row is None else _bot(row)

    async def delete_bot(self, bot_id: str) -> bool:
        async def delete(conn: asyncpg.Connection) -> bool:
            if await conn.fetchval("SELECT 1 FROM mw_keys WHERE bot_id = $1 AND revoked_at IS NULL LIMIT 1", bot_id):
                raise BotInUse(f"bot {bot_id!r} still has active keys")
            status = await conn.execute(
                "UPDATE mw_bots SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL", bot_id)
            return bool(status == "UPDATE 1")

        return await self._atomic(delete)

    async def set_key_limits(self, key_id: str, limits: SpendLimits, rules: KeyRules | None = None) -> ApiKeyRecord | None:
        async def update(conn: asyncpg.Connection) -> ApiKeyRecord | None:
            status = await conn.execute(
                "UPDATE mw_keys SET total_limit_nusd = $2, daily_limit_nusd = $3, monthly_limit_nusd = $4,"
                " rpm_max = $5, tpm_max = $6, parallel_max = $7, ip_allow = $8 WHERE id = $1",
                key_id, limits.total_nusd, limits.day_nusd, limits.month_nusd, *rows.rule_values(rules))
            if status != "UPDATE 1":
                return None
            row = await conn.fetchrow(f"{rows.KEY_SELECT} WHERE k.id = $1", key_id)
            return rows.key_record(text_times(row))

        return await self._atomic(update)

    async def open_cap(self, spec: CapSpec) -> CapBalance:
        async def open_row(conn: asyncpg.Connection) -> CapBalance:
            limit = await conn.fetchval(_LIMIT[(spec.scope, spec.window)], spec.subject_id)
            found = await conn.fetchrow("SELECT * FROM mw_spend_caps WHERE id = $1 FOR UPDATE", spec.cap_id)
            if found is None:
                spent = await _spent(conn, spec)
                found = await conn.fetchrow(
                    "INSERT INTO mw_spend_caps (id, limit_nusd, spent_nusd, version) VALUES ($1, $2, $3, 1)"
                    " ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING *", spec.cap_id, limit, spent)
            elif found["limit_nusd"] != limit:
                # A row kept while its subject had no limit stopped counting: count again from the usage.
                spent = found["spent_nusd"] if found["limit_nusd"] is not None else await _spent(conn, spec)
                found = await conn.fetchrow(
                    "UPDATE mw_spend_caps SET limit_nusd = $2, spent_nusd = $3, version = version + 1 WHERE id = $1"
                    " RETURNING *", spec.cap_id, limit, spent)
            return owner_rows.cap(found)

        return await self._atomic(open_row)

    async def relimit_caps(self, prefix: str, limits: dict[str, int | None]) -> list[CapBalance]:
        async def update(conn: asyncpg.Connection) -> list[CapBalance]:
            changed: list[CapBalance] = []
            for marker, limit in limits.items():
                found = await conn.fetch(
                    "UPDATE mw_spend_caps SET limit_nusd = $2, version = version + 1 WHERE id IN (SELECT id FROM"
                    " mw_spend_caps WHERE starts_with(id, $1) AND limit_nusd IS DISTINCT FROM $2 LIMIT $3) RETURNING *",
                    prefix + marker, limit, RELIMIT_ROWS_MAX)
                changed += [owner_rows.cap(row) for row in found]
            return changed

        return await self._atomic(update)


async def _spent(conn: asyncpg.Connection, spec: CapSpec) -> int:
    if spec.scope is CapScope.CONVERSATION:
        return int(await conn.fetchval(_CONVERSATION_SPENT, spec.subject_id, spec.conversation_id))
    return int(await conn.fetchval(_SPENT[spec.scope] + _WINDOW, spec.subject_id, spec.since, spec.until))
