"""Group commit: many requests' settlements in one database transaction.

Each request hands its usage record to the Settler and waits. One task drains
whatever has queued while the previous commit was in flight, up to
limits.settle_batch_max, and commits it as one batch: at light load a batch is
one request and costs one commit; under load the commit cost is shared. Only
after the commit are the batch's holds released and the waiters woken, so a
cost that a client sees is always a cost already in the book.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Coroutine

from ledger.book import Book, SettleOutcome, SettleResult, UsageRecord
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldSettlement, HoldStore, HoldStoreUnavailable

log = logging.getLogger("meterway.settlement")


@dataclass(frozen=True)
class SettleLimits:
    batch_max: int
    queue_max: int
    retry_max: int
    retry_delay_s: float


class SettlementUnavailable(Exception):
    """The book could not be written; the record stays queued and is retried."""


class Settler:
    def __init__(self, book: Book, holds: HoldStore, limits: SettleLimits) -> None:
        self._book = book
        self._holds = holds
        self._limits = limits
        self._queue: asyncio.Queue[tuple[UsageRecord, asyncio.Future[SettleResult]]] = asyncio.Queue(limits.queue_max)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.batches_committed = 0

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._run(), name="meterway-settler")

    async def settle(self, record: UsageRecord) -> SettleResult:
        return await self.submit(record)

    def try_submit(self, record: UsageRecord) -> asyncio.Future[SettleResult] | None:
        """Queue a settlement without waiting, or None if the queue is full.

        The returned future resolves after the commit; once queued, the
        settlement happens whatever becomes of the caller.
        """
        future: asyncio.Future[SettleResult] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((record, future))
        except asyncio.QueueFull:
            return None
        return future

    async def submit(self, record: UsageRecord) -> asyncio.Future[SettleResult]:
        """try_submit(), waiting for room at limits.settle_queue_max (backpressure)."""
        future = self.try_submit(record)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            await self._queue.put((record, future))
        return future

    async def drain(self) -> None:
        """Wait until every queued settlement is committed (shutdown, tests)."""
        await self._queue.join()

    async def close(self) -> None:
        await self.drain()
        for task in [self._task, *self._background]:
            if task is not None:
                task.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._limits.batch_max and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._write_with_retries([record for record, _ in batch])
            except BaseException:
                self._done(batch)
                raise
            if results is None:
                self._fail(batch)
                continue
            # The next batch may commit while this one's holds are released.
            self._spawn(self._finish(batch, results))

    async def _finish(self, batch: list[tuple[UsageRecord, asyncio.Future[SettleResult]]], results: list[SettleResult]) -> None:
        """Release the committed batch's holds, then wake its waiters (always, even if Redis fails)."""
        try:
            await self._release_holds([record for record, _ in batch], results)
        except Exception:
            log.exception("hold release failed after settlement; the holds will expire")
        finally:
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
            self.batches_committed += 1
            self._done(batch)

    def _fail(self, batch: list[tuple[UsageRecord, asyncio.Future[SettleResult]]]) -> None:
        error = SettlementUnavailable("the ledger is unavailable; the settlement will be retried")
        for _, future in batch:
            if not future.done():
                future.set_exception(error)
        self._requeue_later([record for record, _ in batch])
        self._done(batch)

    def _done(self, batch: list[tuple[UsageRecord, asyncio.Future[SettleResult]]]) -> None:
        for _ in batch:
            self._queue.task_done()

    async def _write_with_retries(self, records: list[UsageRecord]) -> list[SettleResult] | None:
        for attempt in range(self._limits.retry_max + 1):
            try:
                return await self._book.settle_batch(records)
            except LedgerUnavailable as exc:
                log.warning("settle batch of %d failed (attempt %d): %s", len(records), attempt + 1, exc)
                if attempt < self._limits.retry_max:  # after the last one, _requeue_later does the waiting
                    await asyncio.sleep(self._limits.retry_delay_s * (2**attempt))
        return None

    async def _release_holds(self, records: list[UsageRecord], results: list[SettleResult]) -> None:
        settled = [
            HoldSettlement(record.wallet_id, record.request_id, result.balance_nusd, result.version)
            for record, result in zip(records, results) if result.outcome is not SettleOutcome.UNKNOWN_WALLET
        ]
        unknown = [record for record, result in zip(records, results) if result.outcome is SettleOutcome.UNKNOWN_WALLET]
        try:
            await self._holds.settle_many(settled)
            for record in unknown:
                await self._holds.release(record.wallet_id, record.request_id)
        except HoldStoreUnavailable as exc:
            # The debits are committed; the holds expire on their own and the
            # mirror catches up with the next (balance, version) it sees.
            log.warning("hold release failed after settlement: %s", exc)

    def _requeue_later(self, records: list[UsageRecord]) -> None:
        # The upstream has done the work, so the charge must not be dropped:
        # keep retrying in the background, with the usual bounded queue.
        async def retry() -> None:
            await asyncio.sleep(self._limits.retry_delay_s * (2**self._limits.retry_max))
            for record in records:
                self._spawn(self._settle_quietly(record))

        self._spawn(retry())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_quietly(self, record: UsageRecord) -> None:
        try:
            await self.settle(record)
        except SettlementUnavailable:
            pass
