"""The in-process HoldStore: the embedded default's holds, in plain dicts.

The contract is ledger/holds.py's; tests/test_holds_contract.py runs it
against this store and the Redis one alike.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ledger.holds import (
    RESERVE_EXPIRE_BATCH,
    RESERVE_EXPIRE_MAX,
    ExpiredHold,
    HoldSettlement,
    ReserveResult,
    ReserveStatus,
    WalletHolds,
    cap_account,
    check_amount,
    check_balance,
    check_caps,
    check_hold_id,
    check_limit,
    check_settlement,
    check_ttl,
    check_version,
    check_wallet_id,
)


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

    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float,
                      caps: Sequence[str] = ()) -> ReserveResult:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_amount(amount_nusd)
        check_ttl(ttl_s)
        if caps:
            check_caps(wallet_id, caps)
        accounts = [(wallet_id, None), *((cap_account(wallet_id, c), c) for c in caps)] if caps else [(wallet_id, None)]
        now = self._clock()
        fresh: list[tuple[_Wallet, str]] = []
        for account_id, cap_id in accounts:  # decide for every account before taking anything
            w = self._wallets.get(account_id)
            if w is None:
                return ReserveResult(ReserveStatus.WALLET_UNKNOWN, 0, cap_id)
            available = self._available(w, hold_id, amount_nusd, now)
            if hold_id in w.holds:
                continue  # idempotent: counted once
            if available < amount_nusd:
                return ReserveResult(ReserveStatus.INSUFFICIENT, available, cap_id)
            fresh.append((w, account_id))
        for w, account_id in fresh:
            self._take(w, account_id, hold_id, amount_nusd, now + ttl_s)
        wallet = self._wallets[wallet_id]
        return ReserveResult(ReserveStatus.RESERVED, wallet.balance_nusd - wallet.held_nusd)

    def _available(self, w: _Wallet, hold_id: str, amount_nusd: int, now: float) -> int:
        """What w has free once its expired holds (bounded) and an expired hold of this id are released."""
        existing = w.holds.get(hold_id)
        if existing is not None and existing.expires_at <= now:
            self._release(w, hold_id)  # an expired hold id is reserved afresh
        if self._release_due(w, now, RESERVE_EXPIRE_BATCH) == RESERVE_EXPIRE_BATCH:
            if w.balance_nusd - w.held_nusd < amount_nusd:
                self._release_due(w, now, RESERVE_EXPIRE_MAX - RESERVE_EXPIRE_BATCH)
        self._compact(w)
        return w.balance_nusd - w.held_nusd

    def _take(self, w: _Wallet, account_id: str, hold_id: str, amount_nusd: int, expires_at: float) -> None:
        assert hold_id not in w.holds and w.balance_nusd - w.held_nusd >= amount_nusd  # a new hold never overdraws
        self._seq += 1
        w.holds[hold_id] = _Hold(amount_nusd, expires_at, self._seq)
        heapq.heappush(w.expiry_heap, (expires_at, hold_id, self._seq))
        heapq.heappush(self._expiry_heap, (expires_at, account_id, hold_id, self._seq))
        w.held_nusd += amount_nusd
        self._live_holds += 1
        self._check(w)

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
