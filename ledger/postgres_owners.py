"""Owners on Postgres: organisations, members, management keys, invitations, deposits, caps.

A change that must keep a rule locks the row the rule is about first (the
organisation for "an owner remains", the invitation, the deposit), so two
processes deciding at once are serialised by the database, not by luck.
"""

from __future__ import annotations

import asyncpg

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
from ledger.postgres_access import PostgresAccess
from ledger.times import parse_utc


class PostgresOwners(PostgresAccess):
    """Mixed into PostgresBook, which provides _with (a pooled connection, errors translated)."""

    # --- organisations ---------------------------------------------------

    async def create_org_with_owner(self, wallet_id: str, org_name: str, owner: Member,
                                    key: ManagementKeyRecord) -> tuple[Org, Member]:
        assert owner.role is Role.OWNER and owner.wallet_id == wallet_id and key.member_id == owner.member_id

        async def create(conn: asyncpg.Connection) -> tuple[Org, Member]:
            if await conn.fetchval("SELECT 1 FROM mw_accounts WHERE id = $1 AND kind = 'wallet'", wallet_id) is None:
                raise UnknownAccount(f"no wallet {wallet_id!r}")
            status = await conn.execute("INSERT INTO mw_orgs (wallet_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                                        wallet_id, org_name)
            if status != "INSERT 0 1":
                raise OrgExists(f"wallet {wallet_id!r} already has an organisation")
            await _insert_member(conn, owner, MemberStatus.ACTIVE)
            await _insert_management_key(conn, key)
            return await _org(conn, wallet_id), await _member(conn, owner.member_id)

        return await self._atomic(create)

    async def org(self, wallet_id: str) -> Org | None:
        return await self._with(lambda conn: _org_or_none(conn, wallet_id))

    async def set_org_low_balance(self, wallet_id: str, low_balance_nusd: int | None) -> Org:
        async def update(conn: asyncpg.Connection) -> Org:
            await conn.execute("UPDATE mw_orgs SET low_balance_nusd = $2 WHERE wallet_id = $1", wallet_id, low_balance_nusd)
            return await _org(conn, wallet_id)

        return await self._atomic(update)

    # --- members -----------------------------------------------------------

    async def create_member(self, member: Member) -> Member:
        async def create(conn: asyncpg.Connection) -> Member:
            await _org(conn, member.wallet_id)
            await _insert_member(conn, member, member.status)
            return await _member(conn, member.member_id)

        return await self._atomic(create)

    async def member(self, member_id: str) -> Member | None:
        return await self._with(lambda conn: _member_or_none(conn, member_id))

    async def list_members(self, wallet_id: str) -> list[Member]:
        async def read(conn: asyncpg.Connection) -> list[Member]:
            found = await conn.fetch("SELECT * FROM mw_members WHERE wallet_id = $1 ORDER BY created_at, id", wallet_id)
            return [rows.member(row) for row in found]

        return await self._with(read)

    async def set_member_role(self, member_id: str, role: Role) -> Member:
        async def update(conn: asyncpg.Connection) -> Member:
            current = await _locked_member(conn, member_id)
            if role is not Role.OWNER:
                await _keep_an_owner(conn, current)
            await conn.execute("UPDATE mw_members SET role = $2 WHERE id = $1", member_id, role.value)
            return await _member(conn, member_id)

        return await self._atomic(update)

    async def set_member_limit(self, member_id: str, monthly_limit_nusd: int | None,
                               period: str) -> tuple[Member, CapBalance | None]:
        async def update(conn: asyncpg.Connection) -> tuple[Member, CapBalance | None]:
            await _member(conn, member_id)
            await conn.execute("UPDATE mw_members SET monthly_limit_nusd = $2 WHERE id = $1", member_id, monthly_limit_nusd)
            cap_id = member_cap_id(member_id, period)
            row = await conn.fetchrow("UPDATE mw_spend_caps SET limit_nusd = $2, version = version + 1 WHERE id = $1"
                                      " RETURNING *", cap_id, monthly_limit_nusd)
            return await _member(conn, member_id), None if row is None else rows.cap(row)

        return await self._atomic(update)

    async def remove_member(self, member_id: str) -> Member:
        async def remove(conn: asyncpg.Connection) -> Member:
            current = await _locked_member(conn, member_id)
            if current.status is MemberStatus.REMOVED:
                return current
            await _keep_an_owner(conn, current)
            await conn.execute("UPDATE mw_members SET status = 'removed', removed_at = now() WHERE id = $1", member_id)
            for table in ("mw_management_keys", "mw_keys"):
                await conn.execute(f"UPDATE {table} SET revoked_at = now() WHERE member_id = $1 AND revoked_at IS NULL",
                                   member_id)
            return await _member(conn, member_id)

        return await self._atomic(remove)

    # --- management keys -------------------------------------------------

    async def create_management_key(self, key: ManagementKeyRecord) -> None:
        await self._with(lambda conn: _insert_management_key(conn, key))

    async def management_key_by_hash(self, secret_hash: str) -> ManagementIdentity | None:
        async def read(conn: asyncpg.Connection) -> ManagementIdentity | None:
            row = await conn.fetchrow(
                "SELECT k.*, m.id AS m_id, m.wallet_id AS m_wallet_id, m.name AS m_name, m.role AS m_role,"
                " m.status AS m_status, m.monthly_limit_nusd AS m_monthly_limit_nusd, m.created_at AS m_created_at,"
                " m.joined_at AS m_joined_at, m.removed_at AS m_removed_at"
                " FROM mw_management_keys k JOIN mw_members m ON m.id = k.member_id WHERE k.secret_hash = $1",
                secret_hash)
            return None if row is None else ManagementIdentity(rows.management_key(row), rows.member(row, "m_"))

        return await self._with(read)

    async def list_management_keys(self, member_id: str) -> list[ManagementKeyRecord]:
        async def read(conn: asyncpg.Connection) -> list[ManagementKeyRecord]:
            found = await conn.fetch("SELECT * FROM mw_management_keys WHERE member_id = $1 ORDER BY created_at, id",
                                     member_id)
            return [rows.management_key(row) for row in found]

        return await self._with(read)

    async def revoke_management_key(self, key_id: str) -> bool:
        async def revoke(conn: asyncpg.Connection) -> bool:
            status: str = await conn.execute(
                "UPDATE mw_management_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id)
            return status == "UPDATE 1"

        return await self._with(revoke)

    # --- invitations -----------------------------------------------------

    async def create_invite(self, invite_id: str, member_id: str, token_hash: str, expires_at: str) -> None:
        await self._with(lambda conn: conn.execute(
            "INSERT INTO mw_invites (id, token_hash, member_id, expires_at) VALUES ($1, $2, $3, $4)",
            invite_id, token_hash, member_id, parse_utc(expires_at)))

    async def invite(self, token_hash: str) -> tuple[Member, str] | None:
        async def read(conn: asyncpg.Connection) -> tuple[Member, str] | None:
            row = await _open_invite(conn, token_hash, lock=False)
            if row is None:
                return None
            return await _member(conn, row["member_id"]), rows.stored_time(row["expires_at"])

        return await self._with(read)

    async def accept_invite(self, token_hash: str, key: ManagementKeyRecord) -> Member:
        async def accept(conn: asyncpg.Connection) -> Member:
            row = await _open_invite(conn, token_hash, lock=True)
            if row is None or row["member_id"] != key.member_id:
                raise InviteInvalid("this invitation link is unknown, used or expired")
            await conn.execute("UPDATE mw_invites SET accepted_at = now() WHERE id = $1", row["id"])
            await conn.execute("UPDATE mw_members SET status = 'active', joined_at = now() WHERE id = $1", key.member_id)
            await _insert_management_key(conn, key)
            return await _member(conn, key.member_id)

        return await self._atomic(accept)

    # --- spend caps ------------------------------------------------------

    async def open_member_cap(self, member_id: str, period: str) -> CapBalance | None:
        async def open_cap(conn: asyncpg.Connection) -> CapBalance | None:
            cap_id = member_cap_id(member_id, period)
            found = await _cap_or_none(conn, cap_id)
            if found is not None:
                return found
            limit = await conn.fetchrow("SELECT monthly_limit_nusd FROM mw_members WHERE id = $1", member_id)
            if limit is None or limit[0] is None:
                return None
            await conn.execute(
                "INSERT INTO mw_spend_caps (id, limit_nusd, spent_nusd, version)"
                " SELECT $1, $2, COALESCE(SUM(u.cost_nusd), 0), 1 FROM mw_usage u JOIN mw_keys k ON k.id = u.key_id"
                " WHERE k.member_id = $3 AND u.created_at >= $4 AND u.created_at < $5 ON CONFLICT (id) DO NOTHING",
                cap_id, limit[0], member_id, period_start(period), next_period_start(period))
            return await _cap_or_none(conn, cap_id)

        return await self._atomic(open_cap)

    async def spend_cap(self, cap_id: str) -> CapBalance | None:
        return await self._with(lambda conn: _cap_or_none(conn, cap_id))


async def add_to_caps(conn: asyncpg.Connection, spend: dict[str, int]) -> dict[str, CapBalance]:
    """Settlement's part: add each cap's settled cost, bump its version (the caller's transaction)."""
    if not spend:
        return {}
    found = await conn.fetch(
        "UPDATE mw_spend_caps c SET spent_nusd = c.spent_nusd + d.amount, version = c.version + 1"
        " FROM unnest($1::text[], $2::bigint[]) AS d (id, amount) WHERE c.id = d.id RETURNING c.*",
        list(spend), list(spend.values()))
    return {row["id"]: rows.cap(row) for row in found}


async def _insert_member(conn: asyncpg.Connection, member: Member, status: MemberStatus) -> None:
    await conn.execute(
        "INSERT INTO mw_members (id, wallet_id, name, role, status, monthly_limit_nusd, joined_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $5 = 'active' THEN now() END)",
        member.member_id, member.wallet_id, member.name, member.role.value, status.value, member.monthly_limit_nusd)


async def _insert_management_key(conn: asyncpg.Connection, key: ManagementKeyRecord) -> None:
    await conn.execute(
        "INSERT INTO mw_management_keys (id, secret_hash, prefix, member_id, name) VALUES ($1, $2, $3, $4, $5)",
        key.key_id, key.secret_hash, key.prefix, key.member_id, key.name)


async def _locked_member(conn: asyncpg.Connection, member_id: str) -> Member:
    """The member, with its organisation's row locked: owner changes in one org are serialised."""
    current = await _member(conn, member_id)
    await conn.execute("SELECT 1 FROM mw_orgs WHERE wallet_id = $1 FOR UPDATE", current.wallet_id)
    return await _member(conn, member_id)


async def _keep_an_owner(conn: asyncpg.Connection, member: Member) -> None:
    if member.role is not Role.OWNER or member.status is not MemberStatus.ACTIVE:
        return
    owners = await conn.fetchval(
        "SELECT COUNT(*) FROM mw_members WHERE wallet_id = $1 AND role = 'owner' AND status = 'active'", member.wallet_id)
    if owners <= 1:
        raise LastOwner("an organisation needs at least one owner: make another member owner first")


async def _open_invite(conn: asyncpg.Connection, token_hash: str, *, lock: bool) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT i.* FROM mw_invites i JOIN mw_members m ON m.id = i.member_id WHERE i.token_hash = $1"
        " AND i.accepted_at IS NULL AND i.expires_at > now() AND m.status = 'invited'"
        + (" FOR UPDATE OF i, m" if lock else ""), token_hash)


async def _org_or_none(conn: asyncpg.Connection, wallet_id: str) -> Org | None:
    row = await conn.fetchrow("SELECT * FROM mw_orgs WHERE wallet_id = $1", wallet_id)
    return None if row is None else rows.org(row)


async def _org(conn: asyncpg.Connection, wallet_id: str) -> Org:
    found = await _org_or_none(conn, wallet_id)
    if found is None:
        raise UnknownAccount(f"no organisation for wallet {wallet_id!r}")
    return found


async def _member_or_none(conn: asyncpg.Connection, member_id: str) -> Member | None:
    row = await conn.fetchrow("SELECT * FROM mw_members WHERE id = $1", member_id)
    return None if row is None else rows.member(row)


async def _member(conn: asyncpg.Connection, member_id: str) -> Member:
    found = await _member_or_none(conn, member_id)
    if found is None:
        raise UnknownAccount(f"no member {member_id!r}")
    return found


async def _cap_or_none(conn: asyncpg.Connection, cap_id: str) -> CapBalance | None:
    row = await conn.fetchrow("SELECT * FROM mw_spend_caps WHERE id = $1", cap_id)
    return None if row is None else rows.cap(row)
