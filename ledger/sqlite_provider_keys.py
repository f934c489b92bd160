"""Provider keys on SQLite (the contract is ledger/provider_keys.py)."""

from __future__ import annotations

import sqlite3
from typing import Any

from ledger.errors import UnknownAccount
from ledger.provider_keys import ProviderKeyLimit, ProviderKeyRecord
from ledger.sqlite_access import SqliteAccess

_NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


def _record(row: Any) -> ProviderKeyRecord:
    return ProviderKeyRecord(row["id"], row["wallet_id"], row["bot_id"], row["provider"], row["sealed"], row["last4"],
                             row["created_at"], row["revoked_at"])


class SqliteProviderKeys(SqliteAccess):
    async def store_provider_key(self, key: ProviderKeyRecord, keys_max: int) -> ProviderKeyRecord:
        def store(conn: sqlite3.Connection) -> ProviderKeyRecord:
            if conn.execute("SELECT 1 FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (key.wallet_id,)).fetchone() is None:
                raise UnknownAccount(f"no wallet {key.wallet_id!r}")
            conn.execute(
                f"UPDATE mw_provider_keys SET revoked_at = {_NOW} WHERE wallet_id = ? AND bot_id IS ? AND provider = ?"
                " AND revoked_at IS NULL", (key.wallet_id, key.bot_id, key.provider))
            live = conn.execute("SELECT COUNT(*) FROM mw_provider_keys WHERE wallet_id = ? AND revoked_at IS NULL",
                                (key.wallet_id,)).fetchone()[0]
            if live >= keys_max:
                raise ProviderKeyLimit(f"the wallet holds {live} provider keys, the most it may")
            conn.execute("INSERT INTO mw_provider_keys (id, wallet_id, bot_id, provider, sealed, last4)"
                         " VALUES (?, ?, ?, ?, ?, ?)",
                         (key.key_id, key.wallet_id, key.bot_id, key.provider, key.sealed, key.last4))
            return _record(conn.execute("SELECT * FROM mw_provider_keys WHERE id = ?", (key.key_id,)).fetchone())

        return await self._atomic(store)

    async def provider_keys(self, wallet_id: str) -> list[ProviderKeyRecord]:
        found = await self._run(lambda conn: conn.execute(
            "SELECT * FROM mw_provider_keys WHERE wallet_id = ? AND revoked_at IS NULL ORDER BY created_at, id",
            (wallet_id,)).fetchall())
        return [_record(row) for row in found]

    async def revoke_provider_key(self, wallet_id: str, key_id: str) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(f"UPDATE mw_provider_keys SET revoked_at = {_NOW} WHERE id = ? AND wallet_id = ?"
                               " AND revoked_at IS NULL", (key_id, wallet_id))
            return cur.rowcount == 1

        return await self._atomic(revoke)
