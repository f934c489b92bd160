"""The wallet owners' service: organisations, the overview, invitations, activity and descriptions.

No aiohttp here: gateway/http/api.py turns requests into these calls and the
values into JSON. Amounts are integer nUSD; times are aware datetimes or the
ledger's ISO 8601 UTC text.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from config.settings import WalletSettings
from gateway.dialects.openai import UPSTREAM_PATHS
from gateway.money.keys import hash_secret
from gateway.money.owner_keys import NewManagementKey, generate_invite, generate_management_key, new_member_id
from ledger.caps import month_period
from ledger.history import Entry, Spend, WalletFigures
from ledger.holds import HoldStore
from ledger.owners import ManagementKeyRecord, Member, MemberStatus, Org, Role
from ledger.store import LedgerStore
from ledger.times import utc_text


class WarningLevel(str, enum.Enum):
    OK = "ok"
    LOW = "low"
    CRITICAL = "critical"
    EMPTY = "empty"


@dataclass(frozen=True)
class Overview:
    org: Org
    balance_nusd: int
    held_nusd: int
    figures: WalletFigures
    warning: WarningLevel
    low_threshold_nusd: int
    critical_threshold_nusd: int

    @property
    def available_nusd(self) -> int:
        return self.balance_nusd - self.held_nusd


@dataclass(frozen=True)
class Invitation:
    member: Member
    token: str  # in the link, shown once
    expires_at: datetime


def warning_level(balance_nusd: int, low_nusd: int, critical_nusd: int) -> WarningLevel:
    """Aerostack's levels, on the balance: empty at $0 or below, critical and low below their thresholds."""
    if balance_nusd <= 0:
        return WarningLevel.EMPTY
    if balance_nusd < critical_nusd:
        return WarningLevel.CRITICAL
    if balance_nusd < low_nusd:
        return WarningLevel.LOW
    return WarningLevel.OK


def month_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _tokens(n: int) -> str:
    return f"{n:,}"


def describe(entry: Entry) -> str:
    """One human sentence per entry; a kind added by a later migration still gets one."""
    kind = entry.kind
    if kind == "usage" and entry.usage is not None:
        u = entry.usage
        cached = f" ({_tokens(u.cached_tokens)} cached)" if u.cached_tokens else ""
        path = f"/v1{UPSTREAM_PATHS[u.endpoint]}" if u.endpoint in UPSTREAM_PATHS else u.endpoint
        return (f"{u.model} via {path}: {_tokens(u.prompt_tokens)} in{cached} + "
                f"{_tokens(u.completion_tokens)} out tokens (key '{u.key_id}')")
    fixed = {
        "usage": "Usage", "discount": "Discount", "reward": "Reward",
        "expiry": "Expired credit", "earning": "Earning", "payout": "Payout", "payment": "Payment",
        "shortfall": "Unpaid part of a request",
    }
    if kind == "refund":
        text = f"Refund of request {entry.request_id}" if entry.request_id else "Refund"
        return f"{text}: {entry.memo}" if entry.memo else text  # the operator's reason
    if kind == "deposit":  # the ledger's memo names the order: "deposit dep_1 (card)"
        return entry.memo[:1].upper() + entry.memo[1:] if entry.memo else "Deposit"
    if kind == "adjustment":
        return entry.memo or "Adjustment by the operator"
    if kind == "reversal":
        return f"Reversal: {entry.memo}" if entry.memo else "Reversal"
    if kind in fixed:
        text = fixed[kind]
        return f"{text}: {entry.memo}" if entry.memo else text
    return f"{kind.replace('_', ' ').capitalize()}" + (f": {entry.memo}" if entry.memo else "")


class WalletOwners:
    def __init__(self, store: LedgerStore, holds: HoldStore, settings: WalletSettings) -> None:
        self.store = store
        self.holds = holds
        self.settings = settings

    async def create_org(self, wallet_id: str, name: str, owner_name: str) -> tuple[Org, Member, NewManagementKey]:
        """An organisation for a wallet (created if missing) with its first owner and that owner's key."""
        if await self.store.wallet(wallet_id) is None:
            await self.store.create_wallet(wallet_id, name)
        owner = Member(new_member_id(), wallet_id, owner_name, Role.OWNER, MemberStatus.ACTIVE, None, _now_text())
        new = generate_management_key()
        org, member = await self.store.create_org_with_owner(wallet_id, name, owner, self._key_record(new, member_id=owner.member_id))
        return org, member, new

    async def overview(self, org: Org, now: datetime) -> Overview:
        wallet = await self.store.wallet(org.wallet_id)
        balance = wallet.balance_nusd if wallet else 0
        holds = await self.holds.wallet(org.wallet_id)
        figures = await self.store.wallet_figures(org.wallet_id, month_start(now))
        low = org.low_balance_nusd if org.low_balance_nusd is not None else self.settings.low_balance_nusd
        critical = self.settings.critical_balance_nusd
        return Overview(org, balance, holds.held_nusd if holds else 0, figures,
                        warning_level(balance, low, critical), low, critical)

    async def invite(self, wallet_id: str, name: str, role: Role, now: datetime) -> Invitation:
        member = await self.store.create_member(
            Member(new_member_id(), wallet_id, name, role, MemberStatus.INVITED, None, utc_text(now)))
        invite = generate_invite()
        expires = now + timedelta(seconds=self.settings.invite_ttl_s)
        await self.store.create_invite(invite.invite_id, member.member_id, invite.token_hash, utc_text(expires))
        return Invitation(member, invite.token, expires)

    async def accept(self, token: str, key_name: str | None = None) -> tuple[Member, ManagementKeyRecord, NewManagementKey]:
        """The member becomes active and gets its first management key (named `key_name`), once."""
        new = generate_management_key()
        member_id = await self._invited_member_id(token)
        record = self._key_record(new, member_id=member_id, name=key_name)
        member = await self.store.accept_invite(hash_secret(token), record)
        return member, record, new

    async def _invited_member_id(self, token: str) -> str:
        from ledger.owners import InviteInvalid

        found = await self.store.invite(hash_secret(token))
        if found is None:
            raise InviteInvalid("this invitation link is unknown, used or expired")
        return found[0].member_id

    async def create_management_key(self, member_id: str, name: str | None) -> tuple[ManagementKeyRecord, NewManagementKey]:
        new = generate_management_key()
        record = self._key_record(new, member_id=member_id, name=name)
        await self.store.create_management_key(record)
        return record, new

    async def member_activity(self, wallet_id: str, now: datetime) -> dict[str, Spend]:
        return await self.store.member_spend(wallet_id, month_start(now))

    async def key_spend(self, wallet_id: str, now: datetime) -> tuple[dict[str, Spend], dict[str, Spend]]:
        """(today, this month) by key id."""
        return (await self.store.key_spend(wallet_id, day_start(now)),
                await self.store.key_spend(wallet_id, month_start(now)))

    @staticmethod
    def period(now: datetime) -> str:
        return month_period(now)

    @staticmethod
    def _key_record(new: NewManagementKey, *, member_id: str, name: str | None = None) -> ManagementKeyRecord:
        return ManagementKeyRecord(new.key_id, new.secret_hash, new.display_prefix, member_id, name)


def _now_text() -> str:
    return utc_text(datetime.now(UTC))
