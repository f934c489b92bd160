"""Provider keys on Postgres (the contract is ledger/provider_keys.py)."""

from __future__ import annotations

from typing import Any

import asyncpg

from ledger.errors import UnknownAccount
from ledger.postgres_access import PostgresAccess
from ledger.provider_keys import ProviderKeyLimit, ProviderKeyRecord
from ledger.times import utc_text_or_none


def _record(row: Any) -> ProviderKeyRecord:
    return ProviderKeyRecord(row["id"], row["wallet_id"], row["bot_id"], row["provider"], row["sealed"], row["last4"],
                             utc_text_or_none(row["created_at"]), utc_text_or_none(row["revoked_at"]))


class PostgresProviderKeys(PostgresAccess):
    async def store_provider_key(self, key: ProviderKeyRecord, keys_max: int) -> ProviderKeyRecord:
        async def store(conn: asyncpg.Connection) -> ProviderKeyRecord:
            # The wallet row is locked first: two stores for one wallet queue, so the count below holds.
            if await conn.fetchval("SELECT 1 FROM mw_accounts WHERE id = $1 AND kind = 'wallet' FOR UPDATE",
                                   key.wallet_id) is None:
                raise UnknownAccount(f"no wallet {key.wallet_id!r}")
            await conn.execute(
                "UPDATE mw_provider_keys SET revoked_at = now() WHERE wallet_id = $1 AND bot_id IS NOT DISTINCT FROM $2"
                " AND provider = $3 AND revoked_at IS NULL", key.wallet_id, key.bot_id, key.provider)
            live = await conn.fetchval(
                "SELECT COUNT(*) FROM mw_provider_keys WHERE wallet_id = $1 AND revoked_at IS NULL", key.wallet_id)
            if live >= keys_max:
                raise ProviderKeyLimit(f"the wallet holds {live} provider keys, the most it may")
            row = await conn.fetchrow(
                "INSERT INTO mw_provider_keys (id, wallet_id, bot_id, provider, sealed, last4)"
                " VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                key.key_id, key.wallet_id, key.bot_id, key.provider, key.sealed, key.last4)
            return _record(row)

        return await self._atomic(store)

    async def provider_keys(self, wallet_id: str) -> list[ProviderKeyRecord]:
        found = await self._with(lambda conn: conn.fetch(
            "SELECT * FROM mw_provider_keys WHERE wallet_id = $1 AND revoked_at IS NULL ORDER BY created_at, id",
            wallet_id))
        return [_record(row) for row in found]

    async def revoke_provider_key(self, wallet_id: str, key_id: str) -> bool:
        status = await self._with(lambda conn: conn.execute(
            "UPDATE mw_provider_keys SET revoked_at = now() WHERE id = $1 AND wallet_id = $2 AND revoked_at IS NULL",
            key_id, wallet_id))
        return bool(status == "UPDATE 1")
