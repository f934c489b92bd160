"""The Redis hold store's key layout and its Lua scripts (one per operation).

Key layout (``P`` = prefix, ``W`` = wallet id). The ``{w:W}`` hash tag puts all
of one wallet's keys in the same cluster slot:

    P:{w:W}:wallet   hash   balance, version, held   (the versioned mirror)
    P:{w:W}:holds    hash   hold_id -> amount_nusd
    P:{w:W}:exp      zset   hold_id scored by expiry (server ms)
    P:{w:W}:c:C:*    the same three keys for cap C of wallet W (account "W\\x1eC")
    P:expiry         zset   "W\\x1fhold_id" scored by expiry (server ms)
    P:generation     hash   id, born_ms   (see ledger/redis_recovery.py)

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

This module holds text and names only: it imports no redis (a client's
register_script() turns the text into callable scripts, see Scripts.register_on).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from ledger.holds import CAP_SEPARATOR, ID_SEPARATOR, RESERVE_EXPIRE_BATCH, RESERVE_EXPIRE_MAX

# Shared Lua helpers, prepended to every script. Raw string: '\31' is Lua's
# decimal escape for the \x1f separator and must reach Lua unchanged.
PRELUDE = r"""
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

-- The key base of an account: a wallet W, or a cap C of wallet W ("W\30C",
-- kept under W's hash tag). RedisKeys.wallet() is the same rule in Python.
local function account_base(prefix, wid)
  local sep = string.find(wid, '\30', 1, true)
  if not sep then return prefix .. ':{w:' .. wid .. '}:' end
  return prefix .. ':{w:' .. string.sub(wid, 1, sep - 1) .. '}:c:' .. string.sub(wid, sep + 1) .. ':'
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

# KEYS: global index, generation, then wallet, holds, exp of each account: the
# wallet first, then its caps (all under the wallet's hash tag).
# ARGV: hold_id, amount, ttl_ms, generation id, grace_ms, then each account's id.
# Returns {3} if the generation is not ARGV[4] (data lost: recover first),
# {4, ms} if it is younger than the grace (wait ms, retry), {0, i} if account i
# is not mirrored (no balance; re-registered holds alone do not count),
# {2, balance, held, i} if account i cannot cover the amount, else
# {1, balance, held} of the wallet: the hold is on every account. Nothing is
# taken unless every account can cover it.
RESERVE = (
    PRELUDE
    + r"""
local gkey, hid, amount = KEYS[1], ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[3])
local gen = redis.call('HMGET', KEYS[2], 'id', 'born_ms')
if gen[1] ~= ARGV[4] then return {3} end
local now = now_ms()
local ready = tonumber(gen[2]) + tonumber(ARGV[5])
if now < ready then return {4, ready - now} end
local fresh = {}
local wallet
for i = 1, #ARGV - 5 do
  local wkey, hkey, ekey, wid = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2], ARGV[5 + i]
  if redis.call('HEXISTS', wkey, 'balance') == 0 then return {0, i} end
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
  if i == 1 then wallet = s end
  if redis.call('HEXISTS', hkey, hid) == 0 then
    if tonumber(s[1]) - tonumber(s[2]) < tonumber(amount) then return {2, s[1], s[2], i} end
    fresh[#fresh + 1] = i
  end
end
local expiry = now + ttl
for _, i in ipairs(fresh) do
  local wkey, hkey, ekey, wid = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2], ARGV[5 + i]
  redis.call('HSET', hkey, hid, amount)
  redis.call('ZADD', ekey, expiry, hid)
  redis.call('ZADD', gkey, expiry, wid .. '\31' .. hid)
  local held = redis.call('HINCRBY', wkey, 'held', amount)
  if i == 1 then wallet[2] = held end
end
return {1, wallet[1], wallet[2]}
""".replace("@BATCH@", str(RESERVE_EXPIRE_BATCH)).replace("@MORE@", str(RESERVE_EXPIRE_MAX - RESERVE_EXPIRE_BATCH))
)

# KEYS: wallet, holds, exp, global. ARGV: wallet_id, hold_id, balance, version.
# Returns 1 if a hold was released.
SETTLE = (
    PRELUDE
    + r"""
local released = release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2])
apply_mirror(KEYS[1], ARGV[3], ARGV[4])
if released then return 1 end
return 0
"""
)

# KEYS: wallet, holds, exp, global. ARGV: wallet_id, hold_id. Returns 1 if released.
RELEASE = (
    PRELUDE
    + r"""
if release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2]) then return 1 end
return 0
"""
)

# KEYS: wallet. ARGV: balance, version. Returns 1 if applied.
SYNC = (
    PRELUDE
    + r"""
return apply_mirror(KEYS[1], ARGV[1], ARGV[2])
"""
)

# KEYS: global index. ARGV: prefix, limit (>= 1).
# Returns a flat list {wallet_id, hold_id, amount, ...} of the holds released.
# Touches undeclared per-wallet keys: single-instance Redis only (see top).
EXPIRE_DUE = (
    PRELUDE
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
    local base = account_base(prefix, wid)
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
JOIN = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'born_ms', now)
end
return redis.call('HMGET', KEYS[1], 'id', 'born_ms')
"""

# KEYS: generation. Returns its id, or nil (lost).
GENERATION = r"""
return redis.call('HGET', KEYS[1], 'id')
"""

# KEYS: wallet, holds, exp, global, generation. ARGV: generation id, wallet_id,
# hold_id, amount, ttl_ms. Re-registers an open hold after a data loss: no
# balance check (it was granted already), no mirror needed (reserve re-reads
# the book while the wallet hash has no balance). Returns -1 if the generation
# changed again, 0 if the hold is already there, 1 if registered.
REGISTER = (
    PRELUDE
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


def ttl_ms(ttl_s: float) -> int:
    """Seconds -> whole milliseconds, rounded to nearest (0.05 -> 50); the
    scripts' clock has millisecond resolution, so ttl < 0.5 ms is "due now"."""
    return int(ttl_s * 1000 + 0.5)


def text(value: bytes | str) -> str:
    """A reply string, whether the client decodes responses or not."""
    return value.decode("utf-8") if isinstance(value, bytes) else value


class ReserveReply(enum.IntEnum):
    """The first element of the RESERVE script's reply."""

    # {0, i}: account i (1: the wallet, then its caps) has no mirrored balance: the caller syncs it from the book.
    WALLET_UNKNOWN = 0
    # {1, balance, held}: the hold is taken on every account (or already existed); the wallet's figures.
    RESERVED = 1
    # {2, balance, held, i}: account i's balance - held < amount; nothing was taken.
    INSUFFICIENT = 2
    # {3}: the generation is not the caller's: Redis lost its data, recover first.
    GENERATION_CHANGED = 3
    # {4, ms}: the generation is younger than the grace: wait ms, then retry.
    GRACE_WAIT = 4


# The REGISTER script's replies.
REGISTER_GENERATION_CHANGED = -1
REGISTER_ALREADY_THERE = 0
REGISTER_ADDED = 1


@dataclass(frozen=True)
class RedisKeys:
    """Every key of one prefix; ``prefix`` must not contain '{' or '}' (they
    would hijack the hash tag)."""

    prefix: str

    def __post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ValueError(f"prefix must be non-empty and free of braces: {self.prefix!r}")

    def wallet(self, wallet_id: str) -> list[str]:
        """[wallet hash, holds hash, per-wallet expiry zset] of one account: a wallet, or a cap under its wallet's tag."""
        assert ID_SEPARATOR not in wallet_id  # the global index could not split it back
        if CAP_SEPARATOR in wallet_id:
            wallet, _, cap = wallet_id.partition(CAP_SEPARATOR)
            base = f"{self.prefix}:{{w:{wallet}}}:c:{cap}:"
        else:
            base = f"{self.prefix}:{{w:{wallet_id}}}:"
        return [base + "wallet", base + "holds", base + "exp"]

    @property
    def expiry_index(self) -> str:
        return f"{self.prefix}:expiry"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:generation"


@dataclass(frozen=True)
class Scripts:
    """The scripts registered on one client (redis-py AsyncScript objects)."""

    reserve: Any
    settle: Any
    release: Any
    sync: Any
    expire_due: Any
    join: Any
    generation: Any
    register: Any

    @classmethod
    def register_on(cls, client: Any) -> Scripts:
        return cls(
            reserve=client.register_script(RESERVE),
            settle=client.register_script(SETTLE),
            release=client.register_script(RELEASE),
            sync=client.register_script(SYNC),
            expire_due=client.register_script(EXPIRE_DUE),
            join=client.register_script(JOIN),
            generation=client.register_script(GENERATION),
            register=client.register_script(REGISTER),
        )
