"""Rate limits on Redis: one script to admit a request, one to finish it; every gateway process shares them.

Keys (``P`` = prefix, ``K`` = key id), all under one hash tag per key:

    P:{r:K}:m:<minute>   hash   req, tok: the counts of one fixed minute (expire after two)
    P:{r:K}:par          zset   request id scored by its slot's expiry (server ms)

The scripts read Redis's clock (TIME), so every process agrees on the minute.
They build the minute's key name from it, inside the key's hash tag (single
Redis, as the hold store; a Cluster would need the names passed in). The
decision itself is ledger/rates.py's decide(), on the figures the script
returns when it refuses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from ledger.key_rules import KeyRules
from ledger.rates import WINDOW_S, Admission, RateUnavailable, decide, sliding
from ledger.redis_batching import UNAVAILABLE

# What makes a rate check impossible rather than wrong: Redis unreachable, slow, read-only, or full (maxmemory
# with noeviction refuses the script's writes). The caller admits the request; a bug in a script still raises.
RATE_UNAVAILABLE = (*UNAVAILABLE, redis_exc.OutOfMemoryError)

# KEYS: the key's base "P:{r:K}". ARGV: rpm, tpm, parallel_max (-1: none), request id, slot ttl ms.
# Returns {0 admitted | 1 refused, prev_req, prev_tok, cur_req, cur_tok, elapsed_ms, in_flight}: the figures
# before this request was counted. Refuses exactly when ledger/rates.py's decide() would.
ADMIT = r"""
local base = KEYS[1]
local rpm, tpm, pmax = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minute = math.floor(now / 60000)
local elapsed_ms = now - minute * 60000
local cur_key = base .. ':m:' .. minute
local c = redis.call('HMGET', cur_key, 'req', 'tok')
local p = redis.call('HMGET', base .. ':m:' .. (minute - 1), 'req', 'tok')
local prev_req, prev_tok = tonumber(p[1]) or 0, tonumber(p[2]) or 0
local cur_req, cur_tok = tonumber(c[1]) or 0, tonumber(c[2]) or 0
local weight = 1 - elapsed_ms / 60000
local in_flight = 0
local par = base .. ':par'
if pmax >= 0 then
  redis.call('ZREMRANGEBYSCORE', par, '-inf', now)
  in_flight = redis.call('ZCARD', par)
end
local refused = (rpm >= 0 and prev_req * weight + cur_req + 1 > rpm)
  or (tpm >= 0 and prev_tok * weight + cur_tok >= tpm)
  or (pmax >= 0 and in_flight >= pmax)
local out = {refused and 1 or 0, tostring(prev_req), tostring(prev_tok), tostring(cur_req), tostring(cur_tok),
             elapsed_ms, in_flight}
if refused then return out end
redis.call('HINCRBY', cur_key, 'req', 1)
redis.call('PEXPIRE', cur_key, 120000)
if pmax >= 0 then
  redis.call('ZADD', par, now + tonumber(ARGV[5]), ARGV[4])
  redis.call('PEXPIRE', par, tonumber(ARGV[5]))
end
return out
"""

# KEYS: the key's base. ARGV: request id, tokens (0: none to count). Frees the slot, counts the tokens.
FINISH = r"""
local base = KEYS[1]
redis.call('ZREM', base .. ':par', ARGV[1])
local tokens = tonumber(ARGV[2])
if tokens > 0 then
  local t = redis.call('TIME')
  local minute = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 60000)
  local key = base .. ':m:' .. minute
  redis.call('HINCRBY', key, 'tok', tokens)
  redis.call('PEXPIRE', key, 120000)
end
return 1
"""


class RedisRates:
    def __init__(self, client: aioredis.Redis, prefix: str, timeout_s: float) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be non-empty and free of braces: {prefix!r}")
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._admit = client.register_script(ADMIT)
        self._finish = client.register_script(FINISH)

    def base(self, key_id: str) -> str:
        return f"{self._prefix}:{{r:{key_id}}}"

    async def admit(self, key_id: str, rules: KeyRules, request_id: str, slot_ttl_s: float) -> Admission:
        args = [_or_none(rules.rpm), _or_none(rules.tpm), _or_none(rules.parallel_max), request_id,
                max(int(slot_ttl_s * 1000), 1)]
        reply = await self._run(self._admit, [self.base(key_id)], args)
        assert len(reply) == 7 and int(reply[0]) in (0, 1), reply
        previous, current = (float(reply[1]), float(reply[2])), (float(reply[3]), float(reply[4]))
        elapsed = int(reply[5]) / (WINDOW_S * 1000)
        assert 0 <= elapsed < 1 and int(reply[6]) >= 0, reply
        refused = decide(rules, previous, current, elapsed, int(reply[6]))
        assert (refused is not None) == (int(reply[0]) == 1), (reply, refused)  # the script decided as decide() does
        if refused is not None:
            return refused
        return Admission(True, None, 0.0, sliding(previous[0], current[0] + 1, elapsed),
                         sliding(previous[1], current[1], elapsed), (1.0 - elapsed) * WINDOW_S)

    async def finish(self, key_id: str, rules: KeyRules, request_id: str, tokens: int) -> None:
        counted = tokens if rules.tpm is not None and tokens > 0 else 0
        await self._run(self._finish, [self.base(key_id)], [request_id, counted])

    async def _run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await script(keys=keys, args=args)
        except RATE_UNAVAILABLE as exc:
            raise RateUnavailable(f"Redis: {type(exc).__name__}") from exc


def _or_none(value: int | None) -> int:
    return -1 if value is None else value
