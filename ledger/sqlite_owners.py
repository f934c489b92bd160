"""Owners on SQLite: organisations, members, management keys, invitations, deposits, caps.

Every change that must keep a rule (an owner remains, an invitation is used
once, a deposit is credited once) runs in one BEGIN IMMEDIATE transaction:
SQLite has one writer, so the check and the change cannot interleave with another.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

from ledger import owner_rows as rows
from ledger.caps import CapBalance, member_cap_id, next_period_start, period_start
from ledger.errors import UnknownAccount
from ledger.owners import (
    InviteInvalid,
    LastOwner,
    ManagementIdentity,
    ManagementKeyRecord,
    Member,
    MemberStatus,
    Org,
    OrgExists,
    Role,
)
from ledger.sqlite_access import SqliteAccess
from ledger.times import parse_utc, utc_text

NOW = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"


class SqliteOwners(SqliteAccess):
    """Mixed into SqliteBook, which provides _run (one call on the ledger's thread)."""

    # --- organisations ---------------------------------------------------

    async def create_org_with_owner(self, wallet_id: str, org_name: str, owner: Member,
                                    key: ManagementKeyRecord) -> tuple[Org, Member]:
        assert owner.role is Role.OWNER and owner.wallet_id == wallet_id and key.member_id == owner.member_id

        def create(conn: sqlite3.Connection) -> tuple[Org, Member]:
            if conn.execute("SELECT 1 FROM mw_accounts WHERE id = ? AND kind = 'wallet'", (wallet_id,)).fetchone() is None:
                raise UnknownAccount(f"no wallet {wallet_id!r}")
            try:
                conn.execute("INSERT INTO mw_orgs (wallet_id, name) VALUES (?, ?)", (wallet_id, org_name))
            except sqlite3.IntegrityError as exc:
                raise OrgExists(f"wallet {wallet_id!r} already has an organisation") from exc
            _insert_member(conn, owner, MemberStatus.ACTIVE)
            _insert_management_key(conn, key)
            return _org(conn, wallet_id), _member(conn, owner.member_id)

        return await self._atomic(create)

    async def org(self, wallet_id: str) -> Org | None:
        return await self._run(lambda conn: _org_or_none(conn, wallet_id))

    async def set_org_low_balance(self, wallet_id: str, low_balance_nusd: int | None) -> Org:
        def update(conn: sqlite3.Connection) -> Org:
            conn.execute("UPDATE mw_orgs SET low_balance_nusd = ? WHERE wallet_id = ?", (low_balance_nusd, wallet_id))
            return _org(conn, wallet_id)

        return await self._atomic(update)

    # --- members -----------------------------------------------------------

    async def create_member(self, member: Member) -> Member:
        def create(conn: sqlite3.Connection) -> Member:
            _org(conn, member.wallet_id)
            _insert_member(conn, member, member.status)
            return _member(conn, member.member_id)

        return await self._atomic(create)

    async def member(self, member_id: str) -> Member | None:
        return await self._run(lambda conn: _member_or_none(conn, member_id))

    async def list_members(self, wallet_id: str) -> list[Member]:
        def read(conn: sqlite3.Connection) -> list[Member]:
            found = conn.execute("SELECT * FROM mw_members WHERE wallet_id = ? ORDER BY created_at, id", (wallet_id,))
            return [rows.member(row) for row in found]

        return await self._run(read)

    async def set_member_role(self, member_id: str, role: Role) -> Member:
        def update(conn: sqlite3.Connection) -> Member:
            current = _member(conn, member_id)
            if role is not Role.OWNER:
                _keep_an_owner(conn, current)
            conn.execute("UPDATE mw_members SET role = ? WHERE id = ?", (role.value, member_id))
            return _member(conn, member_id)

        return await self._atomic(update)

    async def set_member_limit(self, member_id: str, monthly_limit_nusd: int | None,
                               period: str) -> tuple[Member, CapBalance | None]:
        def update(conn: sqlite3.Connection) -> tuple[Member, CapBalance | None]:
            _member(conn, member_id)
            conn.execute("UPDATE mw_members SET monthly_limit_nusd = ? WHERE id = ?", (monthly_limit_nusd, member_id))
            cap_id = member_cap_id(member_id, period)
            conn.execute("UPDATE mw_spend_caps SET limit_nusd = ?, version = version + 1 WHERE id = ?",
                         (monthly_limit_nusd, cap_id))
            return _member(conn, member_id), _cap_or_none(conn, cap_id)

        return await self._atomic(update)

    async def remove_member(self, member_id: str) -> Member:
        def remove(conn: sqlite3.Connection) -> Member:
            current = _member(conn, member_id)
            if current.status is MemberStatus.REMOVED:
                return current
            _keep_an_owner(conn, current)
            conn.execute(f"UPDATE mw_members SET status = 'removed', removed_at = {NOW} WHERE id = ?", (member_id,))
            for table in ("mw_management_keys", "mw_keys"):
                conn.execute(f"UPDATE {table} SET revoked_at = {NOW} WHERE member_id = ? AND revoked_at IS NULL",
                             (member_id,))
            return _member(conn, member_id)

        return await self._atomic(remove)

    # --- management keys -------------------------------------------------

    async def create_management_key(self, key: ManagementKeyRecord) -> None:
        await self._atomic(lambda conn: _insert_management_key(conn, key))

    async def management_key_by_hash(self, secret_hash: str) -> ManagementIdentity | None:
        def read(conn: sqlite3.Connection) -> ManagementIdentity | None:
            key = conn.execute("SELECT * FROM mw_management_keys WHERE secret_hash = ?", (secret_hash,)).fetchone()
            if key is None:
                return None
            return ManagementIdentity(rows.management_key(key), _member(conn, key["member_id"]))

        return await self._run(read)

    async def list_management_keys(self, member_id: str) -> list[ManagementKeyRecord]:
        def read(conn: sqlite3.Connection) -> list[ManagementKeyRecord]:
            found = conn.execute("SELECT * FROM mw_management_keys WHERE member_id = ? ORDER BY created_at, id",
                                 (member_id,))
            return [rows.management_key(row) for row in found]

        return await self._run(read)

    async def revoke_management_key(self, key_id: str) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(f"UPDATE mw_management_keys SET revoked_at = {NOW} WHERE id = ? AND revoked_at IS NULL",
                                  (key_id,))
            return cursor.rowcount == 1

        return await self._atomic(revoke)

    # --- invitations -----------------------------------------------------

    async def create_invite(self, invite_id: str, member_id: str, token_hash: str, expires_at: str) -> None:
        expires = utc_text(parse_utc(expires_at))
        await self._atomic(lambda conn: conn.execute(
            "INSERT INTO mw_invites (id, token_hash, member_id, expires_at) VALUES (?, ?, ?, ?)",
            (invite_id, token_hash, member_id, expires)))

    async def invite(self, token_hash: str) -> tuple[Member, str] | None:
        def read(conn: sqlite3.Connection) -> tuple[Member, str] | None:
            row = _open_invite(conn, token_hash)
            return None if row is None else (_member(conn, row["member_id"]), row["expires_at"])

        return await self._run(read)

    async def accept_invite(self, token_hash: str, key: ManagementKeyRecord) -> Member:
        def accept(conn: sqlite3.Connection) -> Member:
            row = _open_invite(conn, token_hash)
            if row is None or row["member_id"] != key.member_id:
                raise InviteInvalid("this invitation link is unknown, used or expired")
            conn.execute(f"UPDATE mw_invites SET accepted_at = {NOW} WHERE id = ?", (row["id"],))
            conn.execute(f"UPDATE mw_members SET status = 'active', joined_at = {NOW} WHERE id = ?", (key.member_id,))
            _insert_management_key(conn, key)
            return _member(conn, key.member_id)

        return await self._atomic(accept)

    # --- spend caps ------------------------------------------------------

    async def open_member_cap(self, member_id: str, period: str) -> CapBalance | None:
        def open_cap(conn: sqlite3.Connection) -> CapBalance | None:
            cap_id = member_cap_id(member_id, period)
            found = _cap_or_none(conn, cap_id)
            if found is not None:
                return found
            row = conn.execute("SELECT monthly_limit_nusd FROM mw_members WHERE id = ?", (member_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            spent = conn.execute(
                "SELECT COALESCE(SUM(u.cost_nusd), 0) FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id"
                " WHERE k.member_id = ? AND u.created_at >= ? AND u.created_at < ?",
                (member_id, utc_text(period_start(period)), utc_text(next_period_start(period)))).fetchone()[0]
            conn.execute("INSERT INTO mw_spend_caps (id, limit_nusd, spent_nusd, version) VALUES (?, ?, ?, 1)",
                         (cap_id, row[0], spent))
            return _cap_or_none(conn, cap_id)

        return await self._atomic(open_cap)

    async def spend_cap(self, cap_id: str) -> CapBalance | None:
        return await self._run(lambda conn: _cap_or_none(conn, cap_id))


def add_to_caps(conn: sqlite3.Connection, spend: dict[str, int]) -> dict[str, CapBalance]:
    """Settlement's part: add each cap's settled cost, bump its version (the caller's transaction)."""
    found = {}
    for cap_id, amount in spend.items():
        conn.execute("UPDATE mw_spend_caps SET spent_nusd = spent_nusd + ?, version = version + 1 WHERE id = ?",
                     (amount, cap_id))
        cap = _cap_or_none(conn, cap_id)
        if cap is not None:
            found[cap_id] = cap
    return found


def _insert_member(conn: sqlite3.Connection, member: Member, status: MemberStatus) -> None:
    joined = NOW if status is MemberStatus.ACTIVE else "NULL"
    conn.execute(
        f"INSERT INTO mw_members (id, wallet_id, name, role, status, monthly_limit_nusd, joined_at)"
        f" VALUES (?, ?, ?, ?, ?, ?, {joined})",
        (member.member_id, member.wallet_id, member.name, member.role.value, status.value, member.monthly_limit_nusd))


def _insert_management_key(conn: sqlite3.Connection, key: ManagementKeyRecord) -> None:
    conn.execute("INSERT INTO mw_management_keys (id, secret_hash, prefix, member_id, name) VALUES (?, ?, ?, ?, ?)",
                 (key.key_id, key.secret_hash, key.prefix, key.member_id, key.name))


def _keep_an_owner(conn: sqlite3.Connection, member: Member) -> None:
    """Refuse to demote or remove the organisation's last active owner."""
    if member.role is not Role.OWNER or member.status is not MemberStatus.ACTIVE:
        return
    owners = conn.execute("SELECT COUNT(*) FROM mw_members WHERE wallet_id = ? AND role = 'owner' AND status = 'active'",
                          (member.wallet_id,)).fetchone()[0]
    if owners <= 1:
        raise LastOwner("an organisation needs at least one owner: make another member owner first")


def _open_invite(conn: sqlite3.Connection, token_hash: str) -> sqlite3.Row | None:
    now = utc_text(datetime.now(UTC))
    row: sqlite3.Row | None = conn.execute(
        "SELECT i.* FROM mw_invites i JOIN mw_members m ON m.id = i.member_id WHERE i.token_hash = ?"
        " AND i.accepted_at IS NULL AND i.expires_at > ? AND m.status = 'invited'", (token_hash, now)).fetchone()
    return row


def _org_or_none(conn: sqlite3.Connection, wallet_id: str) -> Org | None:
    row = conn.execute("SELECT * FROM mw_orgs WHERE wallet_id = ?", (wallet_id,)).fetchone()
    return None if row is None else rows.org(row)


def _org(conn: sqlite3.Connection, wallet_id: str) -> Org:
    found = _org_or_none(conn, wallet_id)
    if found is None:
        raise UnknownAccount(f"no organisation for wallet {wallet_id!r}")
    return found


def _member_or_none(conn: sqlite3.Connection, member_id: str) -> Member | None:
    row = conn.execute("SELECT * FROM mw_members WHERE id = ?", (member_id,)).fetchone()
    return None if row is None else rows.member(row)


def _member(conn: sqlite3.Connection, member_id: str) -> Member:
    found = _member_or_none(conn, member_id)
    if found is None:
        raise UnknownAccount(f"no member {member_id!r}")
    return found


def _cap_or_none(conn: sqlite3.Connection, cap_id: str) -> CapBalance | None:
    row = conn.execute("SELECT * FROM mw_spend_caps WHERE id = ?", (cap_id,)).fetchone()
    return None if row is None else rows.cap(row)
