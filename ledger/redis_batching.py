"""Pipelining of the Redis hold store's script calls, and the translation of
Redis's "cannot reach it" errors into HoldStoreUnavailable.

Each call stays its own atomic Lua script (ledger/redis_scripts.py); only the
round trip is shared. The batcher keeps one process's calls in the order they
were made, which the recovery after a data loss relies on (see "Ordering" in
ledger/redis_recovery.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as redis_exc

from ledger.holds import HoldStoreUnavailable

# Errors that mean "the store is unreachable / not writable right now".
UNAVAILABLE = (redis_exc.ConnectionError, redis_exc.TimeoutError, redis_exc.ReadOnlyError, TimeoutError)

# One script call: (registered script, KEYS, ARGV).
ScriptCall = tuple[Any, list[str], list[Any]]


def unavailable(exc: BaseException) -> HoldStoreUnavailable:
    """The error a caller sees for one of UNAVAILABLE (raise it ``from exc``)."""
    return HoldStoreUnavailable(f"Redis hold store unavailable: {exc}")


# Script calls sent in one pipeline at most; more wait for the next one.
PIPELINE_MAX = 256
# The deadline of one pipeline (or lone call), write to reply.
TIMEOUT_S = 5.0


class ScriptBatcher:
    """Pipelines the script calls that queue up while a round trip is in flight.

    When Redis is idle a call is sent at once, alone; calls made while a
    pipeline is on the wire wait for it and then leave together, up to
    pipeline_max per pipeline (group commit, applied to Redis). Each call stays
    its own atomic script; only the round trip is shared. Under load this turns
    N requests' calls into one write and one read on one connection.
    """

    def __init__(self, client: aioredis.Redis, pipeline_max: int, timeout_s: float) -> None:
        assert pipeline_max >= 1, pipeline_max
        self._client = client
        self._pipeline_max = pipeline_max
        self._timeout_s = timeout_s
        self._pending: list[tuple[Any, list[str], list[Any], asyncio.Future[Any]]] = []
        self._in_flight: asyncio.Task[None] | None = None

    async def call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        [result] = await self.call_many([(script, keys, args)])
        return result

    async def call_many(self, calls: list[ScriptCall]) -> list[Any]:
        if not calls:
            return []  # nothing to send; an empty pipeline would be a wasted round trip
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        for script, keys, args in calls:
            futures.append(loop.create_future())
            self._pending.append((script, keys, args, futures[-1]))
        if self._in_flight is None:
            self._send_pending()
        # gather() over futures (not coroutines) creates no tasks.
        return list(await asyncio.gather(*futures))

    async def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """call(), with Redis being unreachable raised as HoldStoreUnavailable."""
        try:
            return await self.call(script, keys, args)
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    async def run_many(self, calls: list[ScriptCall]) -> list[Any]:
        """call_many(), with Redis being unreachable raised as HoldStoreUnavailable."""
        try:
            replies = await self.call_many(calls)
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc
        assert len(replies) == len(calls)  # one reply per call, in order
        return replies

    def _send_pending(self) -> None:
        # One pipeline on the wire at a time: that is what keeps this process's calls in order.
        assert self._in_flight is None and self._pending
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
