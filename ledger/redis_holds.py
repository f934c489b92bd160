"""HoldStore on Redis: each operation is one Lua script, i.e. one round trip.

Key layout (``P`` = prefix, ``W`` = wallet id). The ``{w:W}`` hash tag puts all
of one wallet's keys in the same cluster slot:

    P:{w:W}:wallet   hash   balance, version, held   (the versioned mirror)
    P:{w:W}:holds    hash   hold_id -> amount_nusd
    P:{w:W}:exp      zset   hold_id scored by expiry (server ms)
    P:expiry         zset   "W\\x1fhold_id" scored by expiry (server ms)

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
"""

from __future__ import annotations

import asyncio
from typing import Any, Sequence

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

# KEYS: wallet, holds, exp, global index. ARGV: wallet_id, hold_id, amount, ttl_ms.
# Returns {0} if the wallet is unknown, else {1 reserved | 2 insufficient, balance, held}.
_RESERVE = (
    _LUA_PRELUDE
    + r"""
local wkey, hkey, ekey, gkey = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wid, hid, amount = ARGV[1], ARGV[2], ARGV[3]
local ttl = tonumber(ARGV[4])
if redis.call('EXISTS', wkey) == 0 then return {0} end
local now = now_ms()
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
                    for i, result in zip(missing, await self._execute([batch[i] for i in missing])):
                        results[i] = result
        except BaseException as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), result in zip(batch, results):
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
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "mw", *, close_client: bool = False,
                 pipeline_max: int = PIPELINE_MAX, timeout_s: float = TIMEOUT_S) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and free of braces: {prefix!r}")
        if pipeline_max < 1:
            raise ValueError("pipeline_max must be at least 1")
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

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._batcher.call(script, keys, args)
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc

    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float) -> ReserveResult:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_amount(amount_nusd)
        check_ttl(ttl_s)
        keys = [*self.wallet_keys(wallet_id), self._global_key]
        reply = await self._run(self._reserve, keys, [wallet_id, hold_id, str(amount_nusd), str(_ttl_ms(ttl_s))])
        code = int(reply[0])
        if code == 0:
            return ReserveResult(ReserveStatus.WALLET_UNKNOWN, 0)
        available = int(reply[1]) - int(reply[2])
        return ReserveResult(ReserveStatus.RESERVED if code == 1 else ReserveStatus.INSUFFICIENT, available)

    async def settle(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_balance(balance_nusd)
        check_version(version)
        keys = [*self.wallet_keys(wallet_id), self._global_key]
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
        try:
            replies = await self._batcher.call_many(calls)
        except _UNAVAILABLE as exc:
            raise HoldStoreUnavailable(f"Redis hold store unavailable: {exc}") from exc
        return [int(reply) == 1 for reply in replies]

    async def release(self, wallet_id: str, hold_id: str) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        keys = [*self.wallet_keys(wallet_id), self._global_key]
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
        return [
            ExpiredHold(_text(reply[i]), _text(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)
        ]

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
