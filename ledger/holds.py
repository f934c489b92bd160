"""Holds: short-lived reservations of wallet money, checked and taken atomically.

A request reserves an upper bound of its cost before it goes upstream and
settles (or releases) afterwards. The durable balance lives in the SQL ledger;
a hold store keeps a MIRROR of each wallet's balance next to the active holds
so that "balance - active holds >= amount" can be decided and the hold taken in
one atomic step, across many gateway processes (Redis, see redis_holds.py) or
inside one process (ledger/inprocess_holds.py, the embedded default).

The mirror is versioned: the ledger bumps a wallet's ``version`` on every
balance change, and a store only accepts a (balance, version) pair whose version
is strictly newer than the one it holds. Mirror updates are therefore
idempotent, order-independent and self-healing: after a crash between the
ledger commit and the store update, the next sync() or settle() carrying a newer
version repairs the mirror.

This module must not import redis or aiohttp: the embedded backend runs
without them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ledger.money import AMOUNT_NUSD_MAX

# Redis Lua numbers are IEEE-754 doubles, exact for integers only up to 2**53.
# Every amount, balance and version handed to a hold store must therefore stay
# strictly within +-2**53: 9_007_199_254_740_992 nUSD, about $9.0M per wallet.
# Both backends enforce the same limit so they behave identically.
NUSD_LIMIT = AMOUNT_NUSD_MAX + 1  # exclusive bound; see ledger/money.py

# reserve() releases at most this many of the wallet's expired holds before it
# decides, so a script never runs unboundedly long. If the first batch was full
# and the reservation would still be refused, it releases up to
# RESERVE_EXPIRE_MAX in total before deciding; anything beyond that is left to
# the expire_due() sweeper.
RESERVE_EXPIRE_BATCH = 16
RESERVE_EXPIRE_MAX = 256

# Upper bound for a hold's time to live (a year), far below 2**53 ms.
TTL_MAX_S = 365 * 24 * 3600.0

# Separates wallet id and hold id in the global expiry index of the Redis
# backend; wallet ids must not contain it (hold ids may).
ID_SEPARATOR = "\x1f"

# A spend cap is mirrored as an account of its own, named after the wallet it
# belongs to: "<wallet id>\x1e<cap id>". The Redis backend keeps it under the
# wallet's hash tag, so a request's caps and its wallet are held by one script.
CAP_SEPARATOR = "\x1e"
# reserve() takes at most this many caps besides the wallet.
RESERVE_CAPS_MAX = 8


class HoldStoreUnavailable(Exception):
    """The hold store could not be reached (connection refused, timed out...).

    On a timeout the outcome of the call is UNKNOWN: the operation may have been
    applied. Every operation is idempotent by hold id / version, so retrying the
    same call (or releasing the hold id) is always safe.
    """


class ReserveStatus(enum.Enum):
    # The hold is taken (or a hold with this id already existed for the wallet:
    # idempotent, nothing counted twice).
    RESERVED = "reserved"
    # balance - active holds < amount; nothing was changed.
    INSUFFICIENT = "insufficient"
    # The store has no mirror of this wallet yet: the caller loads
    # (balance, version) from the ledger, calls sync(), and retries.
    WALLET_UNKNOWN = "wallet_unknown"


@dataclass(frozen=True)
class ReserveResult:
    status: ReserveStatus
    # balance - active holds as seen at the decision (after the hold, if
    # RESERVED: the wallet's). 0 for WALLET_UNKNOWN. Can be negative when the
    # ledger charged more than was held (a settle/sync lowered the balance below the holds).
    available_nusd: int
    # For INSUFFICIENT and WALLET_UNKNOWN: the cap id that refused or is not
    # mirrored, or None for the wallet itself.
    cap_id: str | None = None


def cap_account(wallet_id: str, cap_id: str) -> str:
    """The account a wallet's cap is mirrored as: pass it to release(), settle() and sync()."""
    return f"{wallet_id}{CAP_SEPARATOR}{cap_id}"


def is_cap_account(account_id: str) -> bool:
    return CAP_SEPARATOR in account_id


@dataclass(frozen=True)
class WalletHolds:
    balance_nusd: int
    version: int
    # Sum of the holds currently stored (expired holds count until released).
    held_nusd: int
    hold_count: int


@dataclass(frozen=True)
class ExpiredHold:
    wallet_id: str
    hold_id: str
    amount_nusd: int


@dataclass(frozen=True)
class HoldSettlement:
    """A settled request's hold and the ledger's (balance, version) after it."""

    wallet_id: str
    hold_id: str
    balance_nusd: int
    version: int


@runtime_checkable
class HoldStore(Protocol):
    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float,
                      caps: Sequence[str] = ()) -> ReserveResult:
        """Take a hold of amount_nusd (> 0) for ttl_s seconds if the wallet can cover it.

        Expired holds of this wallet are released first (bounded, see
        RESERVE_EXPIRE_BATCH), so they never count as held money. A hold id
        that already exists (and has not expired) gives RESERVED without
        counting again; its amount and expiry are left unchanged.

        With ``caps`` (cap ids, at most RESERVE_CAPS_MAX), the same hold is
        taken on the wallet and on each cap's account (cap_account()) in one
        atomic step, or on none of them: the result names the first cap that
        refused or is not mirrored. Each is released or settled on its own.
        """
        ...

    async def settle(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        """Release the hold (if still there) and apply the ledger's new (balance,
        version) to the mirror if newer (creating the mirror if absent),
        atomically. Returns whether a hold was released."""
        ...

    async def settle_many(self, items: Sequence[HoldSettlement]) -> list[bool]:
        """settle() for each item, in one round trip where the store allows."""
        ...

    async def release(self, wallet_id: str, hold_id: str) -> bool:
        """Release the hold if present; idempotent. Returns whether one was released."""
        ...

    async def sync(self, wallet_id: str, balance_nusd: int, version: int) -> None:
        """Set the mirror if absent or if version is newer than the mirror's."""
        ...

    async def expire_due(self, limit: int) -> list[ExpiredHold]:
        """Release up to ``limit`` holds whose expiry has passed, across all
        wallets, and return them. Each expired hold is released (and returned)
        exactly once, even with several processes calling concurrently."""
        ...

    async def wallet(self, wallet_id: str) -> WalletHolds | None:
        """The mirror and its holds, or None if the wallet is not mirrored."""
        ...

    async def ping(self) -> None:
        """A cheap round trip (readiness); raises HoldStoreUnavailable when the store cannot answer."""
        ...

    async def close(self) -> None: ...


# --- argument checks shared by both backends ---------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_wallet_id(wallet_id: str) -> None:
    """A wallet id, or a cap's account (cap_account()); neither may hold \\x1f."""
    if not isinstance(wallet_id, str) or not wallet_id or ID_SEPARATOR in wallet_id:
        raise ValueError(f"wallet_id must be a non-empty str without \\x1f: {wallet_id!r}")
    if CAP_SEPARATOR in wallet_id and (wallet_id.count(CAP_SEPARATOR) > 1 or not all(wallet_id.split(CAP_SEPARATOR))):
        raise ValueError(f"an account id is a wallet id or '<wallet id>\\x1e<cap id>': {wallet_id!r}")


def check_caps(wallet_id: str, caps: Sequence[str]) -> None:
    """Caps to reserve with a wallet: a wallet's own id (no \\x1e), distinct cap ids, a bounded number."""
    if caps and CAP_SEPARATOR in wallet_id:
        raise ValueError(f"caps are held with a wallet, not with a cap: {wallet_id!r}")
    if len(caps) > RESERVE_CAPS_MAX or len(set(caps)) != len(caps):
        raise ValueError(f"at most {RESERVE_CAPS_MAX} distinct caps: {list(caps)!r}")
    for cap_id in caps:
        if not isinstance(cap_id, str) or not cap_id or ID_SEPARATOR in cap_id or CAP_SEPARATOR in cap_id:
            raise ValueError(f"cap_id must be a non-empty str without \\x1e or \\x1f: {cap_id!r}")


def check_hold_id(hold_id: str) -> None:
    if not isinstance(hold_id, str) or not hold_id:
        raise ValueError(f"hold_id must be a non-empty str: {hold_id!r}")


def check_amount(amount_nusd: int) -> None:
    if not _is_int(amount_nusd) or not 0 < amount_nusd < NUSD_LIMIT:
        raise ValueError(f"amount_nusd must be an int in (0, 2**53): {amount_nusd!r}")


def check_balance(balance_nusd: int) -> None:
    if not _is_int(balance_nusd) or not -NUSD_LIMIT < balance_nusd < NUSD_LIMIT:
        raise ValueError(f"balance_nusd must be an int in (-2**53, 2**53): {balance_nusd!r}")


def check_version(version: int) -> None:
    if not _is_int(version) or not 0 <= version < NUSD_LIMIT:
        raise ValueError(f"version must be an int in [0, 2**53): {version!r}")


def check_ttl(ttl_s: float) -> None:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not (0 <= ttl_s <= TTL_MAX_S):
        # NaN fails the range comparison too.
        raise ValueError(f"ttl_s must be a number in [0, {TTL_MAX_S}]: {ttl_s!r}")


def check_settlement(wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> None:
    check_wallet_id(wallet_id)
    check_hold_id(hold_id)
    check_balance(balance_nusd)
    check_version(version)


def check_limit(limit: int) -> None:
    if not _is_int(limit) or limit < 0:
        raise ValueError(f"limit must be a non-negative int: {limit!r}")
