"""HoldStore on Redis: each operation is one Lua script, i.e. one round trip.

The backend is four modules, each named after its concept:

- ledger/redis_scripts.py: the key layout, the Lua scripts and what they reply
  (and the invariants every script keeps);
- ledger/redis_batching.py: the pipelining of script calls, and Redis's
  "unreachable" errors turned into HoldStoreUnavailable;
- ledger/redis_recovery.py: surviving a loss of Redis's data (generation,
  registry of open holds, re-registration);
- this module: RedisHolds, the HoldStore itself. It checks the arguments
  (ledger/holds.py), runs the scripts, and asserts the shape and meaning of
  every reply before it becomes a value: a reply that breaks the contract is
  an AssertionError, never a guess.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from ledger.holds import (
    NUSD_LIMIT,
    ExpiredHold,
    HoldSettlement,
    HoldStoreUnavailable,
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
from ledger.redis_batching import PIPELINE_MAX, TIMEOUT_S, UNAVAILABLE, ScriptBatcher, ScriptCall, unavailable
from ledger.redis_recovery import RECOVERY_BATCH_MAX, RECOVERY_ROUNDS_MAX, REGISTRY_PRUNE_MIN, LossRecovery
from ledger.redis_scripts import RedisKeys, ReserveReply, Scripts, text, ttl_ms

__all__ = [
    "PIPELINE_MAX",
    "RECOVERY_BATCH_MAX",
    "RECOVERY_ROUNDS_MAX",
    "REGISTRY_PRUNE_MIN",
    "TIMEOUT_S",
    "RedisHolds",
]

_DECIDED = {
    ReserveReply.RESERVED: ReserveStatus.RESERVED,
    ReserveReply.INSUFFICIENT: ReserveStatus.INSUFFICIENT,
    ReserveReply.WALLET_UNKNOWN: ReserveStatus.WALLET_UNKNOWN,
}


class RedisHolds:
    """HoldStore shared by all gateway processes through one Redis.

    ``prefix`` namespaces every key (tests use a random one); it must not
    contain '{' or '}' (they would hijack the hash tag). The client may use
    decode_responses either way. close() closes the client only if
    ``close_client`` is true: by default the caller owns it.

    ``grace_s``: after Redis lost its data, no new hold is granted until the
    new generation is this old (see ledger/redis_recovery.py). 0 suits one
    process alone; gateways pass limits.redis_recovery_grace_s.
    """

    def __init__(self, client: aioredis.Redis, prefix: str = "mw", *, close_client: bool = False,
                 pipeline_max: int = PIPELINE_MAX, timeout_s: float = TIMEOUT_S, grace_s: float = 0.0) -> None:
        self._keys = RedisKeys(prefix)  # raises ValueError on a bad prefix
        if pipeline_max < 1:
            raise ValueError("pipeline_max must be at least 1")
        if not grace_s >= 0:
            raise ValueError(f"grace_s must be >= 0: {grace_s!r}")
        self._grace_s = grace_s
        self._grace_ms = str(ttl_ms(grace_s))
        self._client = client
        self._timeout_s = timeout_s
        self._close_client = close_client
        self._batcher = ScriptBatcher(client, pipeline_max, timeout_s)
        self._scripts = Scripts.register_on(client)
        self._recovery = LossRecovery(self._batcher, self._scripts, self._keys)

    @property
    def prefix(self) -> str:
        return self._keys.prefix

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    def wallet_keys(self, wallet_id: str) -> list[str]:
        """[wallet hash, holds hash, per-wallet expiry zset] of one wallet."""
        return self._keys.wallet(wallet_id)

    @property
    def expiry_index_key(self) -> str:
        return self._keys.expiry_index

    @property
    def generation_key(self) -> str:
        return self._keys.generation

    @property
    def generation(self) -> str | None:
        """The generation this process's open holds are registered under (None: not joined yet)."""
        return self._recovery.generation

    @property
    def open_hold_count(self) -> int:
        """Holds this process granted and has not closed (re-registered after a data loss)."""
        return self._recovery.open_hold_count

    async def check_generation(self) -> bool:
        """The heartbeat: if Redis lost its data since this process joined, recover now.

        Returns whether a recovery ran. A process that never reserved has
        nothing to re-register and does nothing.
        """
        return await self._recovery.check_generation()

    async def reserve(self, wallet_id: str, hold_id: str, amount_nusd: int, ttl_s: float,
                      caps: Sequence[str] = ()) -> ReserveResult:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        check_amount(amount_nusd)
        check_ttl(ttl_s)
        if caps:
            check_caps(wallet_id, caps)
        accounts = [wallet_id, *(cap_account(wallet_id, cap_id) for cap_id in caps)] if caps else [wallet_id]
        keys = [self._keys.expiry_index, self._keys.generation]
        for account_id in accounts:
            keys += self._keys.wallet(account_id)
        head = [hold_id, str(amount_nusd), str(ttl_ms(ttl_s))]
        # Only a data loss makes this loop turn: bounded by the grace plus a few round trips.
        deadline = time.monotonic() + self._grace_s + 2 * self._timeout_s
        while True:
            generation = self._recovery.generation
            if generation is None or self._recovery.must_recover():
                await self._recovery.recover()  # holds of this process first, then new ones
                continue
            reply = await self._batcher.run(self._scripts.reserve, keys,
                                            [*head, generation, self._grace_ms, *accounts])
            code = _reserve_code(reply, len(accounts))
            if code == ReserveReply.RESERVED:
                for account_id in accounts:
                    self._recovery.remember(account_id, hold_id, amount_nusd, ttl_s, generation)
            if code in _DECIDED:
                return _reserve_result(code, reply, amount_nusd, caps)
            if time.monotonic() >= deadline:
                raise HoldStoreUnavailable("Redis lost its data and the hold store is still recovering")
            if code == ReserveReply.GENERATION_CHANGED:
                if self._recovery.generation == generation:  # nobody here has recovered since we asked
                    await self._recovery.recover()
            else:  # the generation is younger than the grace: other processes may still be re-registering
                await asyncio.sleep(min(int(reply[1]) / 1000, max(deadline - time.monotonic(), 0)))

    async def settle(self, wallet_id: str, hold_id: str, balance_nusd: int, version: int) -> bool:
        [released] = await self.settle_many([HoldSettlement(wallet_id, hold_id, balance_nusd, version)])
        return released

    async def settle_many(self, items: Sequence[HoldSettlement]) -> list[bool]:
        calls: list[ScriptCall] = []
        for item in items:
            check_settlement(item.wallet_id, item.hold_id, item.balance_nusd, item.version)
            keys = [*self._keys.wallet(item.wallet_id), self._keys.expiry_index]
            args = [item.wallet_id, item.hold_id, str(item.balance_nusd), str(item.version)]
            calls.append((self._scripts.settle, keys, args))
        # Every argument is checked before anything is forgotten or sent.
        for item in items:
            self._recovery.forget(item.wallet_id, item.hold_id)
        return [_released(reply) for reply in await self._batcher.run_many(calls)]

    async def release(self, wallet_id: str, hold_id: str) -> bool:
        check_wallet_id(wallet_id)
        check_hold_id(hold_id)
        keys = [*self._keys.wallet(wallet_id), self._keys.expiry_index]
        self._recovery.forget(wallet_id, hold_id)
        return _released(await self._batcher.run(self._scripts.release, keys, [wallet_id, hold_id]))

    async def sync(self, wallet_id: str, balance_nusd: int, version: int) -> None:
        check_wallet_id(wallet_id)
        check_balance(balance_nusd)
        check_version(version)
        keys = self._keys.wallet(wallet_id)[:1]
        applied = await self._batcher.run(self._scripts.sync, keys, [str(balance_nusd), str(version)])
        assert int(applied) in (0, 1), applied

    async def expire_due(self, limit: int) -> list[ExpiredHold]:
        check_limit(limit)
        if limit == 0:
            return []  # nothing to do; skip the round trip
        reply = await self._batcher.run(self._scripts.expire_due, [self._keys.expiry_index], [self.prefix, str(limit)])
        assert len(reply) % 3 == 0 and len(reply) // 3 <= limit, len(reply)
        expired = [ExpiredHold(text(reply[i]), text(reply[i + 1]), int(reply[i + 2])) for i in range(0, len(reply), 3)]
        for hold in expired:
            assert 0 < hold.amount_nusd < NUSD_LIMIT, hold  # only amounts check_amount() let in are stored
            self._recovery.forget(hold.wallet_id, hold.hold_id)
        return expired

    async def wallet(self, wallet_id: str) -> WalletHolds | None:
        check_wallet_id(wallet_id)
        wkey, hkey, _ = self._keys.wallet(wallet_id)
        try:
            async with asyncio.timeout(self._timeout_s), self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(wkey, "balance", "version", "held")
                pipe.hlen(hkey)
                (balance, version, held), count = await pipe.execute()
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc
        if balance is None:
            return None
        assert version is not None, wkey  # balance and version are only ever written together
        mirror = WalletHolds(int(balance), int(version), int(held or 0), int(count))
        # Read in one transaction: every stored amount is >= 1, so held and count are 0 together.
        assert mirror.held_nusd >= mirror.hold_count >= 0, mirror
        assert (mirror.held_nusd == 0) == (mirror.hold_count == 0), mirror
        return mirror

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.ping()
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        if self._close_client:
            await self._client.aclose()


# --- what the scripts reply (shapes in ledger/redis_scripts.py) -----------------


# How many elements each RESERVE reply has, by its code.
_RESERVE_REPLY_LENGTH = {
    ReserveReply.WALLET_UNKNOWN: 2,
    ReserveReply.RESERVED: 3,
    ReserveReply.INSUFFICIENT: 4,
    ReserveReply.GENERATION_CHANGED: 1,
    ReserveReply.GRACE_WAIT: 2,
}


def _reserve_code(reply: Any, accounts: int = 1) -> ReserveReply:
    assert int(reply[0]) in _RESERVE_REPLY_LENGTH, reply
    code = ReserveReply(int(reply[0]))
    assert len(reply) == _RESERVE_REPLY_LENGTH[code], reply
    if code == ReserveReply.GRACE_WAIT:
        assert int(reply[1]) > 0, reply  # the script answers "wait" only while now < ready
    if code in (ReserveReply.WALLET_UNKNOWN, ReserveReply.INSUFFICIENT):
        assert 1 <= int(reply[-1]) <= accounts, reply  # which account: one that was asked about
    return code


def _reserve_result(code: ReserveReply, reply: Any, amount_nusd: int, caps: Sequence[str] = ()) -> ReserveResult:
    """The decision in a RESERVED / INSUFFICIENT / WALLET_UNKNOWN reply."""
    # Account 1 is the wallet (cap_id None), account i > 1 is caps[i - 2].
    cap_id = None if code == ReserveReply.RESERVED or int(reply[-1]) == 1 else caps[int(reply[-1]) - 2]
    if code == ReserveReply.WALLET_UNKNOWN:
        return ReserveResult(ReserveStatus.WALLET_UNKNOWN, 0, cap_id)
    balance_nusd, held_nusd = int(reply[1]), int(reply[2])
    assert -NUSD_LIMIT < balance_nusd < NUSD_LIMIT, reply  # only check_balance()d balances are stored
    available_nusd = balance_nusd - held_nusd
    if code == ReserveReply.RESERVED:
        # The hold (new, or the same id already there) is counted in held. The
        # reply cannot tell a new hold (available >= 0) from a repeat after the
        # ledger lowered the balance (available may be < 0); InProcessHolds can.
        assert held_nusd > 0, reply
    else:
        # Refused: the decision the script made, and nothing was taken.
        assert held_nusd >= 0 and available_nusd < amount_nusd, reply
    return ReserveResult(_DECIDED[code], available_nusd, cap_id)


def _released(reply: Any) -> bool:
    """A SETTLE / RELEASE reply: 1 if a hold was released, else 0."""
    released = int(reply)
    assert released in (0, 1), reply
    return released == 1
