"""HoldStore on Redis: each operation is one Lua script, i.e. one round trip.

Key layout (``P`` = prefix, ``W`` = wallet id). The ``{w:W}`` hash tag puts all
of one wallet's keys in the same cluster slot:

    P:{w:W}:wallet   hash   balance, version, held   (the versioned mirror)
    P:{w:W}:holds    hash   hold_id -> amount_nusd
    P:{w:W}:exp      zset   hold_id scored by expiry (server ms)
    P:expiry         zset   "W\\x1fhold_id" scored by expiry (server ms)
    P:generation     hash   id, born_ms   (see "Losing Redis's data" below)

``P:expiry`` is the global expiry index that expire_due() sweeps. It spans
wallets, so it cannot share a slot with them, and the sweep script touches
wallet keys it did not declare in KEYS. That is fine on one Redis (our target,
optionally with replicas/Sentinel); Redis Cluster would need one expiry index
per slot and a sweep per slot.

Invariants every script maintains: a hold exists in ``holds`` iff it has an
entry in ``exp`` and in the global index (same score), and ``held`` equals the
sum of ``holds``. The Redis server must run with ``maxmemory-policy
noeviction`` (an evicted key would break them).

Clock: the scripts read redis.call('TIME'), so all gateway processes agree on
when a hold expires. Redis >= 7 replicates script effects, which makes TIME
legal before writes.

Numbers: Lua numbers are doubles. Money and versions are passed in as decimal
strings, stored verbatim, and changed only with HINCRBY on those strings; Lua
arithmetic is used only for comparisons, exact because holds.py keeps every
value within +-2**53 (see NUSD_LIMIT). Numbers are never formatted by Lua
(tostring would use "%.14g" and lose digits).

Losing Redis's data
-------------------
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
- Recovery (_recover, one at a time per process; this process's new reserves
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
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from ledger.holds import (
    RESERVE_EXPIRE_BATCH,
    RESERVE_EXPIRE_MAX,
    ExpiredHold,
    HoldSettlement,
    HoldStoreUnavailable,
    ReserveResult,
    ReserveStatus,
    WalletHolds,
    check_amount,
    check_balance,
    check_hold_id,
    check_limit,
    check_ttl,
    check_version,
    check_wallet_id,
)

# Errors that mean "the store is unreachable / not writable right now".
_UNAVAILABLE = (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.ReadOnlyError, TimeoutError)

# Shared Lua helpers, prepended to every script. Raw string: '\31' is Lua's
# decimal escape for the \x1f separator and must reach Lua unchanged.
_LUA_PRELUDE = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Remove one hold from all three structures and from the held total.
-- Returns its amount (the stored decimal string) or false if absent.
local function release(wkey, hkey, ekey, gkey, wid, hid)
  local amt = redis.call('HGET', hkey, hid)
  if not amt then return false end
  redis.call('HDEL', hkey, hid)
  redis.call('ZREM', ekey, hid)
  redis.call('ZREM', gkey, wid .. '\31' .. hid)
  redis.call('HINCRBY', wkey, 'held', '-' .. amt)
  return amt
end

-- Release up to `limit` of this wallet's holds whose expiry <= now, oldest
-- first. Returns how many index entries were processed.
local function release_due(wkey, hkey, ekey, gkey, wid, now, limit)
  local due = redis.call('ZRANGEBYSCORE', ekey, '-inf', now, 'LIMIT', 0, limit)
  for _, hid in ipairs(due) do
    if not release(wkey, hkey, ekey, gkey, wid, hid) then
      redis.call('ZREM', ekey, hid)  -- dangling index entry: heal
    end
  end
  return #due
end

-- Version rule: accept (balance, version) if the mirror is absent or the
-- version is strictly newer. Returns 1 if applied.
local function apply_mirror(wkey, balance, version)
  local cur = redis.call('HGET', wkey, 'version')
  if cur and tonumber(version) <= tonumber(cur) then return 0 end
  redis.call('HSET', wkey, 'balance', balance, 'version', version)
  redis.call('HSETNX', wkey, 'held', '0')
  return 1
end
"""

# KEYS: wallet, holds, exp, global index, generation.
# ARGV: wallet_id, hold_id, amount, ttl_ms, generation id, grace_ms.
# Returns {3} if the generation is not ARGV[5] (data lost: recover first),
# {4, ms} if it is younger than the grace (wait ms, retry), {0} if the wallet is
# not mirrored (no balance; re-registered holds alone do not count), else
# {1 reserved | 2 insufficient, balance, held}.
_RESERVE = (
    _LUA_PRELUDE
    + r"""
local wkey, hkey, ekey, gkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wid, hid, amount = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[4])
local gen = redis.call('HMGET', KEYS[5], 'id', 'born_ms')
if gen[1] ~= ARGV[5] then return {3} end
local now = now_ms()
local ready = tonumber(gen[2]) + tonumber(ARGV[6])
if now < ready then return {4, ready - now} end
if redis.call('HEXISTS', wkey, 'balance') == 0 then return {0} end
local exp = redis.call('ZSCORE', ekey, hid)
if exp and tonumber(exp) <= now then
  release(wkey, hkey, ekey, gkey, wid, hid)  -- an expired hold id is reserved afresh
end
local s
if release_due(wkey, hkey, ekey, gkey, wid, now, @BATCH@) == @BATCH@ then
  s = redis.call('HMGET', wkey, 'balance', 'held')
  if tonumber(s[1]) - tonumber(s[2]) < tonumber(amount) then
    release_due(wkey, hkey, ekey, gkey, wid, now, @MORE@)
  end
end
s = redis.call('HMGET', wkey, 'balance', 'held')
if redis.call('HEXISTS', hkey, hid) == 1 then return {1, s[1], s[2]} end
if tonumber(s[1]) - tonumber(s[2]) < tonumber(amount) then return {2, s[1], s[2]} end
local expiry = now + ttl
redis.call('HSET', hkey, hid, amount)
redis.call('ZADD', ekey, expiry, hid)
redis.call('ZADD', gkey, expiry, wid .. '\31' .. hid)
local held = redis.call('HINCRBY', wkey, 'held', amount)
return {1, s[1], held}
""".replace("@BATCH@", str(RESERVE_EXPIRE_BATCH)).replace("@MORE@", str(RESERVE_EXPIRE_MAX - RESERVE_EXPIRE_BATCH))
)

# KEYS: wallet, holds, exp, global. ARGV: wallet_id, hold_id, balance, version.
# Returns 1 if a hold was released.
_SETTLE = (
    _LUA_PRELUDE
    + r"""
local released = release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
apply_mirror(KEYS[1], ARGV[3], ARGV[4])
if released then return 1 end
return 0
"""
)

# KEYS: wallet, holds, exp, global. ARGV: wallet_id, hold_id. Returns 1 if released.
_RELEASE = (
    _LUA_PRELUDE
    + r"""
if release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]) then return 1 end
return 0
"""
)

# KEYS: wallet. ARGV: balance, version. Returns 1 if applied.
_SYNC = (
    _LUA_PRELUDE
    + r"""
return apply_mirror(KEYS[1], ARGV[1], ARGV[2])
"""
)

# KEYS: global index. ARGV: prefix, limit (>= 1).
# Returns a flat list {wallet_id, hold_id, amount, ...} of the holds released.
# Touches undeclared per-wallet keys: single-instance Redis only (see top).
_EXPIRE_DUE = (
    _LUA_PRELUDE
    + r"""
local gkey, prefix, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', gkey, '-inf', now_ms(), 'LIMIT', 0, limit)
local out = {}
for _, m in ipairs(due) do
  local sep = string.find(m, '\31', 1, true)
  local amt = false
  local wid, hid
  if sep then
    wid = string.sub(m, 1, sep - 1)
    hid = string.sub(m, sep + 1)
    local base = prefix .. ':{w:' .. wid .. '}:'
    amt = release(base .. 'wallet', base .. 'holds', base .. 'exp', gkey, wid, hid)
  end
  if amt then
    out[#out + 1] = wid
    out[#out + 1] = hid
    out[#out + 1] = amt
  else
    redis.call('ZREM', gkey, m)  -- dangling index entry: heal
  end
end
return out
"""
)


# KEYS: generation. ARGV: a fresh id, used only if the generation is missing.
# Returns {id, born_ms}: the generation every process now joins.
_JOIN = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'born_ms', now)
end
return redis.call('HMGET', KEYS[1], 'id', 'born_ms')
"""

# KEYS: generation. Returns its id, or nil (lost).
_GENERATION = r"""
return redis.call('HGET', KEYS[1], 'id')
"""

# KEYS: wallet, holds, exp, global, generation. ARGV: generation id, wallet_id,
# hold_id, amount, ttl_ms. Re-registers an open hold after a data loss: no
# balance check (it was granted already), no mirror needed (reserve re-reads
# the book while the wallet hash has no balance). Returns -1 if the generation
# changed again, 0 if the hold is already there, 1 if registered.
_REGISTER = (
    _LUA_PRELUDE
    + r"""
local wkey, hkey, ekey, gkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('HGET', KEYS[5], 'id') ~= ARGV[1] then return -1 end
local wid, hid, amount = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HEXISTS', hkey, hid) == 1 then return 0 end
local expiry = now_ms() + tonumber(ARGV[5])
redis.call('HSET', hkey, hid, amount)
redis.call('ZADD', ekey, expiry, hid)
redis.call('ZADD', gkey, expiry, wid .. '\31' .. hid)
redis.call('HINCRBY', wkey, 'held', amount)
return 1
"""
)

# Re-registered holds per pipelined batch during a recovery.
RECOVERY_BATCH_MAX = 256
# A recovery that keeps finding the generation changed under it gives up
# (HoldStoreUnavailable) after this many rounds; the next call tries again.
RECOVERY_ROUNDS_MAX = 8
# The registry is pruned of expired holds when it grows past twice its last
# pruned size, and never below this.
REGISTRY_PRUNE_MIN = 1024

log = logging.getLogger("meterway.holds")


@dataclass
class _OpenHold:
    """A hold this process granted and has not closed: what it re-registers after a loss."""

    amount_nusd: int
    expires_at: float  # time.monotonic(); taken after the reply, so never earlier than Redis's
    generation: str  # the generation it is registered under


# Script calls sent in one pipeline at most; more wait for the next one.
PIPELINE_MAX = 256
# The deadline of one pipeline (or lone call), write to reply.
TIMEOUT_S = 5.0


class _ScriptBatcher:
    """Pipelines the script calls that queue up while a round trip is in flight.

    When Redis is idle a call is sent at once, alone; calls made while a
    pipeline is on the wire wait for it and then leave together, up to
    pipeline_max per pipeline (group commit, applied to Redis). Each call stays
    its own atomic script; only the round trip is shared. Under load this turns
    N requests' calls into one write and one read on one connection.
    """

    def __init__(self, client: aioredis.Redis, pipeline_max: int, timeout_s: float) -> None:
        self._client = client
        self._pipeline_max = pipeline_max
        self._timeout_s = timeout_s
        self._pending: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self._in_flight: asyncio.Task[None] | None = None

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        [result] = await self.call_many([(script, keys, args)])
        return result

    async def call_many(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for script, keys, args in calls:
            futures.append(loop.create_future())
            self._pending.append((script, keys, args, futures[-1]))
        if self._in_flight is None:
            self._send_pending()
        # gather() over futures (not coroutines) creates no tasks.
        return list(await asyncio.gather(*futures))

    def _send_pending(self) -> None:
        batch, self._pending = self._pending[: self._pipeline_max], self._pending[self._pipeline_max :]
        self._in_flight = asyncio.get_running_loop().create_task(self._send(batch))
        self._in_flight.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._in_flight = None
        if self._pending:
            self._send_pending()

    async def _send(self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await self._execute(batch)
                missing = [i for i, r in enumerate(results) if isinstance(r, redis_exc.NoScriptError)]
                if missing:
                    # Redis restarted or flushed its script cache: load and resend those.
                    for script in {id(batch[i][0]): batch[i][0] for i in missing}.values():
                        await self._client.script_load(script.script)
                    for i, result in zip(missing, await self._execute([batch[i] for i in missing]), strict=True):
                        results[i] = result
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _execute(self, batch: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        if len(batch) == 1:
            # A pipeline's own bookkeeping costs more than it saves for one call.
            script, keys, args, _ = batch[0]
            try:
                return [await self._client.evalsha(script.sha, len(keys), *keys, *args)]
            except redis_exc.NoScriptError as exc:
                return [exc]
        async with self._client.pipeline(transaction=False) as pipe:
            for script, keys, args, _ in batch:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))


def _ttl_ms(ttl_s: float) -> int:
    """Seconds -> whole milliseconds, rounded to nearest (0.05 -> 50); the
    scripts' clock has millisecond resolution, so ttl < 0.5 ms is "due now"."""
    return int(ttl_s * 1000 + 0.5)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class RedisHolds:
    """HoldStore shared by all gateway processes through one Redis.

    ``prefix`` namespaces every key (tests use a random one); it must not
    contain '{' or '}' (they would hijack the hash tag). The client may use
    decode_responses either way. close() closes the client only if
    ``close_client`` is true: by default the caller owns it.

    ``grace_s``: after Redis lost its data, no new hold is granted until the
    new generation is this old (see "Losing Redis's data" at the top). 0 suits
    one process alone; gateways pass limits.redis_recovery_grace_s.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "mw", *, close_client: bool = False,
                 pipeline_max: int = PIPELINE_MAX, timeout_s: float = TIMEOUT_S, grace_s: float = 0.0) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and free of braces: {prefix!r}")
        if pipeline_max < 1:
            raise ValueError("pipeline_max must be at least 1")
        if not grace_s >= 0:
            raise ValueError(f"grace_s must be >= 0: {grace_s!r}")
        self._grace_s = grace_s
        self._grace_ms = str(_ttl_ms(grace_s))
        self._generation_key = f"{prefix}:generation"
        # The generation this process's holds are registered under (None: not joined yet).
        self._generation: str | None = None
        self._open: dict[tuple[str, str], _OpenHold] = {}
        self._prune_at = REGISTRY_PRUNE_MIN
        self._recovery_lock = asyncio.Lock()
        self._recoveries = 0  # completed recoveries: lets waiters skip one that just ran
        # A hold was granted under a generation this process has since left (its
        # reply was read after a recovery had looked): the next call recovers.
        self._stale = False
        self._client = client
        self._timeout_s = timeout_s
        self._batcher = _ScriptBatcher(client, pipeline_max, timeout_s)
        self._prefix = prefix
        self._close_client = close_client
        self._global_key = f"{prefix}:expiry"
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)
        self._release = client.register_script(_RELEASE)
        self._sync = client.register_script(_SYNC)
        self._expire_due = client.register_script(_EXPIRE_DUE)
        self._join = client.register_script(_JOIN)
        self._current_generation = client.register_script(_GENERATION)
        self._register = client.register_script(_REGISTER)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    def wallet_keys(self, wallet_id: str) -> list[str]:
        """[wallet hash, holds hash, per-wallet expiry zset] of one wallet."""
        base = f"{self._prefix}:{{w:{wallet_id}}}:"
        return [base + "wallet", base + "holds", base + "exp"]

    @property
    def expiry_index_key(self) -> str:
        return self._global_key

    @property
    def generation_key(self) -> str:
        return self._generation_key

    @property
    def generation(self) -> str | None:
        """The generation this process's open holds are registered under (None: not joined yet)."""
        return self._generation

    @property
    def open_hold_count(self) -> int:
        """Holds this process granted and has not closed (re-registered after a data loss)."""
        return len(self._open)

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._batcher.call(script, keys, args)
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc

    async def _run_many(self, calls: list[tuple[Any, list[str], list[Any]]]) -> list[Any]:
        try:
            return await self._batcher.call_many(calls)
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc

    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float) -> ReserveResult:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_amount(amount_nusd)
        check_ttl(ttl_s)
        keys = [*self.wallet_keys(wallet_id), self._global_key, self._generation_key]
        ttl_ms = str(_ttl_ms(ttl_s))
        # Only a data loss makes this loop turn: bounded by the grace plus a few round trips.
        deadline = time.monotonic() + self._grace_s + 2 * self._timeout_s
        while True:
            generation = self._generation
            if generation is None or self._stale or self._recovery_lock.locked():
                await self._recover()  # holds of this process first, then new ones
                continue
            reply = await self._run(self._reserve, keys, [wallet_id, hold_id, str(amount_nusd), ttl_ms, generation, self._grace_ms])
            code = int(reply[0])
            if code == 1:
                self._remember(wallet_id, hold_id, amount_nusd, ttl_s, generation)
            if code in (1, 2):
                available = int(reply[1]) - int(reply[2])
                return ReserveResult(ReserveStatus.RESERVED if code == 1 else ReserveStatus.INSUFFICIENT, available)
            if code == 0:
                return ReserveResult(ReserveStatus.WALLET_UNKNOWN, 0)
            if time.monotonic() >= deadline:
                raise HoldStoreUnavailable("Redis lost its data and the hold store is still recovering")
            if code == 3:
                if self._generation == generation:  # nobody here has recovered since we asked
                    await self._recover()
            else:  # 4: the generation is younger than the grace: other processes may still be re-registering
                await asyncio.sleep(min(int(reply[1]) / 1000, max(deadline - time.monotonic(), 0)))

    # --- surviving a loss of Redis's data (see the module docstring) ------------

    def _remember(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float, generation: str) -> None:
        key = (wallet_id, hold_id)
        if key not in self._open:  # an idempotent repeat keeps the first hold's amount, as Redis does
            self._open[key] = _OpenHold(amount_nusd, time.monotonic() + ttl_s, generation)
        if generation != self._generation:
            self._stale = True  # granted before a loss, read after a recovery looked: recover again
        if len(self._open) > self._prune_at:
            now = time.monotonic()
            self._open = {k: h for k, h in self._open.items() if h.expires_at > now}
            self._prune_at = max(REGISTRY_PRUNE_MIN, 2 * len(self._open))

    def _forget(self, wallet_id: str, hold_id: str) -> None:
        """Before a settle/release is sent: a later re-register batch must not bring the hold back."""
        self._open.pop((wallet_id, hold_id), None)

    async def check_generation(self) -> bool:
        """The heartbeat: if Redis lost its data since this process joined, recover now.

        Returns whether a recovery ran. A process that never reserved has
        nothing to re-register and does nothing.
        """
        if self._generation is None:
            return False
        current = await self._run(self._current_generation, [self._generation_key], [])
        if current is not None and _text(current) == self._generation and not self._stale:
            return False
        await self._recover()
        return True

    async def _recover(self) -> None:
        """Join (or create) the current generation and re-register every open hold under it."""
        seen = self._recoveries
        async with self._recovery_lock:
            if self._recoveries != seen and self._generation is not None and not self._stale:
                return  # a recovery finished while we waited for it
            self._stale = False  # this recovery registers every stale hold, whatever set it
            for _ in range(RECOVERY_ROUNDS_MAX):
                gen_id, _born_ms = await self._run(self._join, [self._generation_key], [uuid.uuid4().hex])
                generation = _text(gen_id)
                if await self._register_open_holds(generation):
                    if self._generation is not None and generation != self._generation:
                        log.warning("Redis lost the hold store's data (generation %s -> %s); re-registered this "
                                    "process's %d open holds", self._generation, generation, len(self._open))
                    self._generation = generation
                    self._recoveries += 1
                    return
            raise HoldStoreUnavailable("Redis keeps losing its data; the hold store could not recover")

    async def _register_open_holds(self, generation: str) -> bool:
        """False if the generation changed again mid-way (the caller starts over)."""
        while True:
            stale = [key for key, hold in self._open.items() if hold.generation != generation]
            if not stale:
                return True
            for start in range(0, len(stale), RECOVERY_BATCH_MAX):
                # Built and queued with no await in between: see "Ordering" at the top.
                batch, calls = [], []
                now = time.monotonic()
                for key in stale[start:start + RECOVERY_BATCH_MAX]:
                    hold = self._open.get(key)
                    if hold is None or hold.generation == generation:
                        continue  # closed (or registered) meanwhile
                    if hold.expires_at <= now:
                        del self._open[key]  # expired: nothing to hold any more
                        continue
                    wallet_id, hold_id = key
                    keys = [*self.wallet_keys(wallet_id), self._global_key, self._generation_key]
                    ttl_ms = max(_ttl_ms(hold.expires_at - now), 1)
                    calls.append((self._register, keys, [generation, wallet_id, hold_id, str(hold.amount_nusd), str(ttl_ms)]))
                    batch.append(hold)
                if not calls:
                    continue
                replies = await self._run_many(calls)
                if any(int(reply) == -1 for reply in replies):
                    return False
                for hold in batch:
                    hold.generation = generation

    async def settle(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_balance(balance_nusd)
        check_version(version)
        keys = [*self.wallet_keys(wallet_id), self._global_key]
        self._forget(wallet_id, hold_id)
        reply = await self._run(self._settle, keys, [wallet_id, hold_id, str(balance_nusd), str(version)])
        return int(reply) == 1

    async def settle_many(self, items: Sequence[HoldSettlement]) -> list[bool]:
        calls = []
        for item in items:
            check_wallet_id(item.wallet_id)
            check_hold_id(item.hold_id)
            check_balance(item.balance_nusd)
            check_version(item.version)
            keys = [*self.wallet_keys(item.wallet_id), self._global_key]
            calls.append((self._settle, keys, [item.wallet_id, item.hold_id, str(item.balance_nusd), str(item.version)]))
        for item in items:
            self._forget(item.wallet_id, item.hold_id)
        try:
            replies = await self._batcher.call_many(calls)
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc
        return [int(reply) == 1 for reply in replies]

    async def release(self, wallet_id: str, hold_id: str) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        keys = [*self.wallet_keys(wallet_id), self._global_key]
        self._forget(wallet_id, hold_id)
        return int(await self._run(self._release, keys, [wallet_id, hold_id])) == 1

    async def sync(self, wallet_id: str, balance_nusd: int, version: int) -> None:
        check_wallet_id(wallet_id)
        check_balance(balance_nusd)
        check_version(version)
        await self._run(self._sync, self.wallet_keys(wallet_id)[:1], [str(balance_nusd), str(version)])

    async def expire_due(self, limit: int) -> list[ExpiredHold]:
        check_limit(limit)
        if limit == 0:
            return []  # nothing to do; skip the round trip
        reply = await self._run(self._expire_due, [self._global_key], [self._prefix, str(limit)])
        expired = [
            ExpiredHold(_text(reply[i]), _text(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)
        ]
        for hold in expired:
            self._forget(hold.wallet_id, hold.hold_id)
        return expired

    async def wallet(self, wallet_id: str) -> WalletHolds | None:
        check_wallet_id(wallet_id)
        wkey, hkey, _ = self.wallet_keys(wallet_id)
        try:
            async with asyncio.timeout(self._timeout_s), self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(wkey, "balance", "version", "held")
                pipe.hlen(hkey)
                (balance, version, held), count = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc
        if balance is None:
            return None
        return WalletHolds(int(balance), int(version), int(held or 0), int(count))

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.ping()
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc

    async def close(self) -> None:
        if self._close_client:
            await self._client.aclose()
