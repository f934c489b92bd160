"""Surviving a loss of Redis's data: the generation, the registry of this
process's open holds, and the recovery that re-registers them.

A FLUSHDB, or a restart of a Redis that keeps nothing on disk, forgets every
hold in flight. The next reserve finds no mirror, Billing re-reads the balance
from the book and syncs it: a mirror with no holds, while the requests those
holds paid for are still running. Without more, the wallet is spent twice
(a $0.01 wallet served $0.013 under load). Redis cannot tell us what it lost,
but each gateway process knows its own open holds, so:

- Generation. ``P:generation`` names the current life of the data (a random
  id and the Redis time it was born). Whoever finds it missing creates it
  (atomically, in a script), and every process joins the one it finds. A data
  loss removes it with everything else, so a changed or missing generation
  *is* the signal; nothing else has to be compared.
- Registry. Each RedisHolds remembers the holds it granted and has not settled,
  released or seen expire (wallet, hold id, amount, local expiry, and the
  generation they are registered under): a dict write per reserve and a pop
  per settle, bounded by the requests in flight. Expired entries are pruned.
- Detection. The reserve script is given the generation its caller believes
  in and checks it (one HMGET in the same script: still one round trip) and
  answers "generation changed" instead of deciding. Idle processes, which
  reserve nothing, learn it from a heartbeat (check_generation(), run by the
  gateway every limits.redis_heartbeat_interval_s).
- Recovery (LossRecovery.recover, one at a time per process; this process's new reserves
  wait for it): join or create the new generation, then re-register every
  open hold not yet registered under it, with its remaining time to live, in
  pipelined batches. Re-registering adds the hold and raises ``held`` without a
  balance check, and needs no balance: a wallet hash holding only ``held`` is
  "not mirrored" to reserve (it checks the balance field), so the next
  reserve re-reads the book and syncs it in, keeping the held total. The
  register script checks the generation too: if the data is lost again
  mid-way, recovery starts over. A hold granted under the old generation
  whose reply is read only after a recovery finished marks the registry
  stale, and the next reserve or heartbeat recovers again.
- Grace. A reserve under a generation younger than the grace
  (limits.redis_recovery_grace_s, which must exceed the heartbeat interval
  plus the Redis deadline) gets "wait" instead of a decision: the store sleeps
  until the generation is old enough and retries (bounded; then
  HoldStoreUnavailable, i.e. a 503 that charged nothing). By then every live
  process has noticed and re-registered, so no new hold is granted against a
  balance whose holds are not all counted. A brand-new Redis (first deploy, a
  new prefix) cannot be told from a flushed one and pays the grace once; the
  constructor's default grace is 0 (one process, e.g. tests and tools).
- Ordering. A hold leaves the registry before its settle/release is sent, and
  each re-register batch is built from the registry at the moment it is
  queued; the batcher keeps one process's calls in order, so a settled hold is
  never re-registered after its settle (which would leave it held until it
  expires). A hold whose debit is committed but whose settle has not been sent
  yet is re-registered: counted twice for a moment, which only refuses, never
  overspends. A settle or release of a hold the loss already removed changes
  no ``held`` (release finds nothing) and the versioned balance rule stays.

What this does not cover: a process that dies together with Redis's data (its
holds are gone with it; its in-flight requests were cut too), a process stalled
longer than the grace, and a Redis that restores an older snapshot or fails
over to a lagging replica (the generation survives, so nothing is noticed).
After such an event, delete ``P:generation``: every process re-registers.

RedisHolds (ledger/redis_holds.py) owns one LossRecovery and consults it on
every reserve (which generation to name), settle/release (forget the hold
first) and heartbeat (check_generation).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

from ledger.holds import NUSD_LIMIT, HoldStoreUnavailable
from ledger.redis_batching import ScriptBatcher, ScriptCall
from ledger.redis_scripts import (
    REGISTER_ADDED,
    REGISTER_ALREADY_THERE,
    REGISTER_GENERATION_CHANGED,
    RedisKeys,
    Scripts,
    text,
    ttl_ms,
)

# Re-registered holds per pipelined batch during a recovery.
RECOVERY_BATCH_MAX = 256
# A recovery that keeps finding the generation changed under it gives up
# (HoldStoreUnavailable) after this many rounds; the next call tries again.
RECOVERY_ROUNDS_MAX = 8
# The registry is pruned of expired holds when it grows past twice its last
# pruned size, and never below this.
REGISTRY_PRUNE_MIN = 1024

_REGISTER_REPLIES = (REGISTER_GENERATION_CHANGED, REGISTER_ALREADY_THERE, REGISTER_ADDED)

log = logging.getLogger("meterway.holds")


@dataclass
class OpenHold:
    """A hold this process granted and has not closed: what it re-registers after a loss."""

    amount_nusd: int
    expires_at: float  # time.monotonic(); taken after the reply, so never earlier than Redis's
    generation: str  # the generation it is registered under


class LossRecovery:
    """One process's view of the current generation, its open holds, and their recovery."""

    def __init__(self, batcher: ScriptBatcher, scripts: Scripts, keys: RedisKeys) -> None:
        self._batcher = batcher
        self._scripts = scripts
        self._keys = keys
        # The generation this process's holds are registered under (None: not joined yet).
        self._generation: str | None = None
        self._open: dict[tuple[str, str], OpenHold] = {}
        self._prune_at = REGISTRY_PRUNE_MIN
        self._lock = asyncio.Lock()
        self._recoveries = 0  # completed recoveries: lets waiters skip one that just ran
        # A hold was granted under a generation this process has since left (its
        # reply was read after a recovery had looked): the next call recovers.
        self._stale = False

    @property
    def generation(self) -> str | None:
        """The generation this process's open holds are registered under (None: not joined yet)."""
        return self._generation

    @property
    def open_hold_count(self) -> int:
        return len(self._open)

    def must_recover(self) -> bool:
        """Whether a reserve must (join and) recover before it may name a generation."""
        return self._generation is None or self._stale or self._lock.locked()

    def remember(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float, generation: str) -> None:
        assert 0 < amount_nusd < NUSD_LIMIT, amount_nusd  # reserve() checked it before asking Redis
        assert generation, "a hold is granted under a named generation"
        key = (wallet_id, hold_id)
        if key not in self._open:  # an idempotent repeat keeps the first hold's amount, as Redis does
            self._open[key] = OpenHold(amount_nusd, time.monotonic() + ttl_s, generation)
        if generation != self._generation:
            self._stale = True  # granted before a loss, read after a recovery looked: recover again
        if len(self._open) > self._prune_at:
            now = time.monotonic()
            self._open = {k: h for k, h in self._open.items() if h.expires_at > now}
            self._prune_at = max(REGISTRY_PRUNE_MIN, 2 * len(self._open))

    def forget(self, wallet_id: str, hold_id: str) -> None:
        """Before a settle/release is sent: a later re-register batch must not bring the hold back."""
        self._open.pop((wallet_id, hold_id), None)

    async def check_generation(self) -> bool:
        """The heartbeat: if Redis lost its data since this process joined, recover now.

        Returns whether a recovery ran. A process that never reserved has
        nothing to re-register and does nothing.
        """
        if self._generation is None:
            return False
        current = await self._batcher.run(self._scripts.generation, [self._keys.generation], [])
        if current is not None and text(current) == self._generation and not self._stale:
            return False
        await self.recover()
        return True

    async def recover(self) -> None:
        """Join (or create) the current generation and re-register every open hold under it."""
        seen = self._recoveries
        async with self._lock:
            if self._recoveries != seen and self._generation is not None and not self._stale:
                return  # a recovery finished while we waited for it
            self._stale = False  # this recovery registers every stale hold, whatever set it
            for _ in range(RECOVERY_ROUNDS_MAX):
                generation = await self._join()
                if await self._register_open_holds(generation):
                    if self._generation is not None and generation != self._generation:
                        log.warning("Redis lost the hold store's data (generation %s -> %s); re-registered this "
                                    "process's %d open holds", self._generation, generation, len(self._open))
                    self._generation = generation
                    self._recoveries += 1
                    return
            raise HoldStoreUnavailable("Redis keeps losing its data; the hold store could not recover")

    async def _join(self) -> str:
        """The current generation, created (with a fresh id) if Redis has none."""
        reply = await self._batcher.run(self._scripts.join, [self._keys.generation], [uuid.uuid4().hex])
        assert len(reply) == 2 and reply[0] is not None and reply[1] is not None, reply
        gen_id, born_ms = reply
        assert 0 <= int(born_ms) < NUSD_LIMIT, reply
        return text(gen_id)

    async def _register_open_holds(self, generation: str) -> bool:
        """False if the generation changed again mid-way (the caller starts over)."""
        while True:
            stale = [key for key, hold in self._open.items() if hold.generation != generation]
            if not stale:
                return True
            for start in range(0, len(stale), RECOVERY_BATCH_MAX):
                # Built and queued with no await in between: see "Ordering" above.
                batch, calls = self._register_calls(stale[start:start + RECOVERY_BATCH_MAX], generation)
                if not calls:
                    continue
                replies = [int(reply) for reply in await self._batcher.run_many(calls)]
                assert all(reply in _REGISTER_REPLIES for reply in replies), replies
                if REGISTER_GENERATION_CHANGED in replies:
                    return False
                for hold in batch:
                    hold.generation = generation

    def _register_calls(self, keys: list[tuple[str, str]], generation: str) -> tuple[list[OpenHold], list[ScriptCall]]:
        """The REGISTER calls for those of ``keys`` still open and not registered under ``generation``."""
        batch: list[OpenHold] = []
        calls: list[ScriptCall] = []
        now = time.monotonic()
        for key in keys:
            hold = self._open.get(key)
            if hold is None or hold.generation == generation:
                continue  # closed (or registered) meanwhile
            if hold.expires_at <= now:
                del self._open[key]  # expired: nothing to hold any more
                continue
            wallet_id, hold_id = key
            script_keys = [*self._keys.wallet(wallet_id), self._keys.expiry_index, self._keys.generation]
            remaining_ms = max(ttl_ms(hold.expires_at - now), 1)
            calls.append((self._scripts.register, script_keys,
                          [generation, wallet_id, hold_id, str(hold.amount_nusd), str(remaining_ms)]))
            batch.append(hold)
        assert len(batch) == len(calls) <= RECOVERY_BATCH_MAX
        return batch, calls
