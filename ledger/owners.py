"""Who owns a wallet: its organisation, members with roles, management keys, invitations, deposits.

A wallet is an organisation's (one org per wallet, keyed by the wallet id). Its
members hold management keys (``mwm-...``) that manage the wallet; inference
keys (``mw-...``, ledger.book.ApiKeyRecord) call models. Both are stored only
as hashes. What each role may do is the gateway's business
(gateway/money/roles.py); the database only guarantees the facts that must
never break, inside its own transactions:

- an organisation always has at least one active owner (LastOwner);
- an invitation is accepted at most once, and never after it expires;
- removing a member revokes its management and inference keys in the same transaction;
- a deposit is credited at most once (its posting id is ``deposit:<id>``).

Deposits are rail-agnostic: Stripe and on-chain deposits share the table and
differ by ``method`` and ``external_ref``. This module holds values and the
protocol only; postgres_owners.py and sqlite_owners.py implement it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from ledger.caps import CapBalance
from ledger.errors import LedgerError


class Role(str, enum.Enum):
    OWNER = "owner"  # members, keys, caps, top-ups, settings
    DEVELOPER = "developer"  # its own inference keys and its own usage
    VIEWER = "viewer"  # reads, never writes


class MemberStatus(str, enum.Enum):
    INVITED = "invited"  # an invitation link is out; no credentials yet
    ACTIVE = "active"
    REMOVED = "removed"  # its keys are revoked; kept for the history


class DepositStatus(str, enum.Enum):
    PENDING = "pending"
    COMPLETED = "completed"
    EXPIRED = "expired"
    FAILED = "failed"
    REFUNDED = "refunded"


class LastOwner(LedgerError):
    """The change would leave the organisation without an active owner."""

    code = "last_owner"


class OrgExists(LedgerError):
    code = "org_exists"


class DepositNotPending(LedgerError):
    """Only a pending deposit can be completed (a completed one answers EXISTS)."""

    code = "deposit_not_pending"


class InviteInvalid(LedgerError):
    """Unknown, already accepted, or expired: a link works once, within its time."""

    code = "invite_invalid"


@dataclass(frozen=True)
class Org:
    wallet_id: str
    name: str
    low_balance_nusd: int | None  # the owner's own "low" threshold; None: the configured default
    created_at: str


@dataclass(frozen=True)
class Member:
    member_id: str
    wallet_id: str
    name: str
    role: Role
    status: MemberStatus
    monthly_limit_nusd: int | None  # None: no limit beyond the wallet's balance
    created_at: str
    joined_at: str | None = None
    removed_at: str | None = None


@dataclass(frozen=True)
class ManagementKeyRecord:
    key_id: str
    secret_hash: str
    prefix: str  # the first characters of the secret, safe to show
    member_id: str
    name: str | None
    created_at: str | None = None
    revoked_at: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class ManagementIdentity:
    """What a management key resolves to: the key and its member (the member's org is member.wallet_id)."""

    key: ManagementKeyRecord
    member: Member


@dataclass(frozen=True)
class Deposit:
    deposit_id: str  # also the order number shown to the owner
    wallet_id: str
    method: str  # "card", "eth", "usdc", ...
    amount_credited_nusd: int  # what the wallet receives
    paid_amount: str  # decimal string in paid_currency (a card pays less with a discount; a chain pays wei)
    paid_currency: str  # "usd", "eth", "usdc"
    status: DepositStatus
    created_at: str
    completed_at: str | None = None
    external_ref: str | None = None  # the rail's id: a Checkout Session, a transaction hash
    discount_nusd: int = 0  # the part of amount_credited_nusd that sys:discounts pays (ledger/payments.py)
    payment_ref: str | None = None  # the payment's id: a PaymentIntent
    customer_ref: str | None = None  # the payer at the rail: a Stripe customer
    tier: str | None = None  # the top-up tier it was bought at
    purpose: str = "topup"  # "topup", "auto_reload" or "keyless"
    paid_cents: int | None = None  # what the card paid, in cents (take-backs are proportional to it)
    credit_expires_at: str | None = None  # credit validity: its credit is a lot that expires then (ledger/lots.py)

    def __post_init__(self) -> None:
        assert 0 <= self.discount_nusd < self.amount_credited_nusd, self


def deposit_posting_id(deposit_id: str) -> str:
    """The posting that credits a deposit: one id per deposit, so it is credited at most once."""
    return f"deposit:{deposit_id}"


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    total: int  # how many match the query, across all pages
    next_cursor: str | None  # opaque; None on the last page


class Owners(Protocol):
    # organisations
    async def create_org_with_owner(self, wallet_id: str, org_name: str, owner: Member,
                                    key: ManagementKeyRecord) -> tuple[Org, Member]: ...
    async def org(self, wallet_id: str) -> Org | None: ...
    async def set_org_low_balance(self, wallet_id: str, low_balance_nusd: int | None) -> Org: ...
    # members
    async def create_member(self, member: Member) -> Member: ...
    async def member(self, member_id: str) -> Member | None: ...
    async def list_members(self, wallet_id: str) -> list[Member]: ...
    async def set_member_role(self, member_id: str, role: Role) -> Member: ...  # LastOwner
    async def set_member_limit(self, member_id: str, monthly_limit_nusd: int | None,
                               period: str) -> tuple[Member, CapBalance | None]: ...
    # ... and the period's cap row, changed in the same transaction (None: no row yet), for the hold mirror
    async def remove_member(self, member_id: str) -> Member: ...  # LastOwner; revokes its keys
    # management keys
    async def create_management_key(self, key: ManagementKeyRecord) -> None: ...
    async def management_key_by_hash(self, secret_hash: str) -> ManagementIdentity | None: ...
    async def list_management_keys(self, member_id: str) -> list[ManagementKeyRecord]: ...
    async def revoke_management_key(self, key_id: str) -> bool: ...
    # invitations: the member exists (INVITED) before its link is accepted
    async def create_invite(self, invite_id: str, member_id: str, token_hash: str, expires_at: str) -> None: ...
    async def invite(self, token_hash: str) -> tuple[Member, str] | None: ...  # an open one: (member, expires_at)
    async def accept_invite(self, token_hash: str, key: ManagementKeyRecord) -> Member: ...  # InviteInvalid
    # spend caps (ledger/caps.py)
    async def open_member_cap(self, member_id: str, period: str) -> CapBalance | None: ...  # None: no limit
    async def spend_cap(self, cap_id: str) -> CapBalance | None: ...
