"""Holds: short-lived reservations of wallet money, checked and taken atomically.

A request reserves an upper bound of its cost before it goes upstream and
settles (or releases) afterwards. The durable balance lives in the SQL ledger;
a hold store keeps a MIRROR of each wallet's balance next to the active holds
so that "balance - active holds >= amount" can be decided and the hold taken in
one atomic step, across many gateway processes (Redis, see redis_holds.py) or
inside one process (InProcessHolds below, the embedded default).

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
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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
    # RESERVED). 0 for WALLET_UNKNOWN. Can be negative when the ledger charged
    # more than was held (a settle/sync lowered the balance below the holds).
    available_nusd: int


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
    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float) -> ReserveResult:
        """Take a hold of amount_nusd (> 0) for ttl_s seconds if the wallet can cover it.

        Expired holds of this wallet are released first (bounded, see
        RESERVE_EXPIRE_BATCH), so they never count as held money. A hold id
        that already exists (and has not expired) gives RESERVED without
        counting again; its amount and expiry are left unchanged.
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
    if not isinstance(wallet_id, str) or not wallet_id or ID_SEPARATOR in wallet_id:
        raise ValueError(f"wallet_id must be a non-empty str without \\x1f: {wallet_id!r}")


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


# --- in-process implementation ------------------------------------------------


@dataclass
class _Hold:
    amount_nusd: int
    expires_at: float
    seq: int  # distinguishes a re-created hold id from stale heap entries


@dataclass
class _Wallet:
    balance_nusd: int
    version: int
    held_nusd: int = 0
    holds: dict[str, _Hold] = field(default_factory=dict)
    # min-heap of (expires_at, hold_id, seq); entries of released holds are
    # skipped lazily and compacted away when they pile up.
    expiry_heap: list[tuple[float, str, int]] = field(default_factory=list)


class InProcessHolds:
    """HoldStore in plain dicts, for the embedded single-process gateway.

    No method awaits between checking and updating, so every operation is
    atomic with respect to other tasks on the same event loop. Not thread-safe,
    and not shared between processes (use RedisHolds for that).

    ``clock`` returns seconds; it defaults to time.monotonic (immune to wall
    clock jumps) and is injectable for tests.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._wallets: dict[str, _Wallet] = {}
        # global min-heap of (expires_at, wallet_id, hold_id, seq), lazily cleaned
        self._expiry_heap: list[tuple[float, str, str, int]] = []
        self._live_holds = 0
        self._seq = 0

    # internal helpers (never await)

    def _release(self, w: _Wallet, hold_id: str) -> int | None:
        hold = w.holds.pop(hold_id, None)
        if hold is None:
            return None
        w.held_nusd -= hold.amount_nusd
        self._live_holds -= 1
        self._check(w)
        return hold.amount_nusd

    def _check(self, w: _Wallet) -> None:
        """O(1) after every change of w's holds: every amount is >= 1, so held is at
        least their count, and 0 exactly when there are none; each has heap entries."""
        assert w.held_nusd >= len(w.holds) and (w.holds or w.held_nusd == 0), (w.held_nusd, len(w.holds))
        assert len(w.expiry_heap) >= len(w.holds) and self._live_holds >= len(w.holds) >= 0

    def _release_due(self, w: _Wallet, now: float, limit: int) -> int:
        """Release up to ``limit`` of w's expired holds, oldest expiry first."""
        released = 0
        heap = w.expiry_heap
        while released < limit and heap and heap[0][0] <= now:
            _, hold_id, seq = heapq.heappop(heap)
            hold = w.holds.get(hold_id)
            if hold is None or hold.seq != seq:
                continue  # stale entry of a released / re-created hold
            self._release(w, hold_id)
            released += 1
        return released

    def _compact(self, w: _Wallet | None) -> None:
        if w is not None and len(w.expiry_heap) > 2 * len(w.holds) + 32:
            w.expiry_heap = [(h.expires_at, hid, h.seq) for hid, h in w.holds.items()]
            heapq.heapify(w.expiry_heap)
        if len(self._expiry_heap) > 2 * self._live_holds + 32:
            self._expiry_heap = [
                (h.expires_at, wid, hid, h.seq) for wid, wal in self._wallets.items() for hid, h in wal.holds.items()
            ]
            heapq.heapify(self._expiry_heap)
        assert len(self._expiry_heap) >= self._live_holds >= 0  # every live hold stays indexed

    def _apply_mirror(self, wallet_id: str, balance_nusd: int, version: int) -> _Wallet:
        w = self._wallets.get(wallet_id)
        if w is None:
            w = self._wallets[wallet_id] = _Wallet(balance_nusd, version)
        elif version > w.version:
            w.balance_nusd, w.version = balance_nusd, version
        assert w.version >= version  # the mirror never goes back to an older version
        return w

    # HoldStore

    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float) -> ReserveResult:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_amount(amount_nusd)
        check_ttl(ttl_s)
        w = self._wallets.get(wallet_id)
        if w is None:
            return ReserveResult(ReserveStatus.WALLET_UNKNOWN, 0)
        now = self._clock()
        existing = w.holds.get(hold_id)
        if existing is not None and existing.expires_at <= now:
            self._release(w, hold_id)  # an expired hold id is reserved afresh
        if self._release_due(w, now, RESERVE_EXPIRE_BATCH) == RESERVE_EXPIRE_BATCH:
            if w.balance_nusd - w.held_nusd < amount_nusd:
                self._release_due(w, now, RESERVE_EXPIRE_MAX - RESERVE_EXPIRE_BATCH)
        try:
            if hold_id in w.holds:  # idempotent: counted once (available < 0 if the ledger charged more since)
                return ReserveResult(ReserveStatus.RESERVED, w.balance_nusd - w.held_nusd)
            if w.balance_nusd - w.held_nusd < amount_nusd:
                assert hold_id not in w.holds  # refused: nothing taken
                return ReserveResult(ReserveStatus.INSUFFICIENT, w.balance_nusd - w.held_nusd)
            self._seq += 1
            expires_at = now + ttl_s
            w.holds[hold_id] = _Hold(amount_nusd, expires_at, self._seq)
            heapq.heappush(w.expiry_heap, (expires_at, hold_id, self._seq))
            heapq.heappush(self._expiry_heap, (expires_at, wallet_id, hold_id, self._seq))
            w.held_nusd += amount_nusd
            self._live_holds += 1
            self._check(w)
            assert w.balance_nusd - w.held_nusd >= 0  # a new hold never overdraws
            return ReserveResult(ReserveStatus.RESERVED, w.balance_nusd - w.held_nusd)
        finally:
            self._compact(w)

    async def settle(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        check_settlement(wallet_id, hold_id, balance_nusd, version)
        return self._settle_now(wallet_id, hold_id, balance_nusd, version)

    async def settle_many(self, items: Sequence[HoldSettlement]) -> list[bool]:
        for i in items:  # all checked before any is applied, as RedisHolds does
            check_settlement(i.wallet_id, i.hold_id, i.balance_nusd, i.version)
        return [self._settle_now(i.wallet_id, i.hold_id, i.balance_nusd, i.version) for i in items]

    def _settle_now(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        w = self._wallets.get(wallet_id)
        released = w is not None and self._release(w, hold_id) is not None
        w = self._apply_mirror(wallet_id, balance_nusd, version)
        self._compact(w)
        assert hold_id not in w.holds  # settled holds are gone, whether or not this call released it
        return released

    async def release(self, wallet_id: str, hold_id: str) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        w = self._wallets.get(wallet_id)
        if w is None:
            return False
        released = self._release(w, hold_id) is not None
        self._compact(w)
        assert hold_id not in w.holds
        return released

    async def sync(self, wallet_id: str, balance_nusd: int, version: int) -> None:
        check_wallet_id(wallet_id)
        check_balance(balance_nusd)
        check_version(version)
        self._apply_mirror(wallet_id, balance_nusd, version)

    async def expire_due(self, limit: int) -> list[ExpiredHold]:
        check_limit(limit)
        now = self._clock()
        out: list[ExpiredHold] = []
        touched: dict[str, _Wallet] = {}
        heap = self._expiry_heap
        while len(out) < limit and heap and heap[0][0] <= now:
            _, wallet_id, hold_id, seq = heapq.heappop(heap)
            w = self._wallets.get(wallet_id)
            hold = w.holds.get(hold_id) if w is not None else None
            if w is None or hold is None or hold.seq != seq:
                continue
            self._release(w, hold_id)
            touched[wallet_id] = w
            out.append(ExpiredHold(wallet_id, hold_id, hold.amount_nusd))
        for w in touched.values():
            self._compact(w)
        assert len(out) <= limit
        return out

    async def wallet(self, wallet_id: str) -> WalletHolds | None:
        w = self._wallets.get(wallet_id)
        if w is None:
            return None
        return WalletHolds(w.balance_nusd, w.version, w.held_nusd, len(w.holds))

    async def ping(self) -> None:
        """In memory: always available."""

    async def close(self) -> None:
        """Nothing to release; the state lives and dies with the process."""
