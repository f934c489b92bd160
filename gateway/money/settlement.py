"""Group commit: many requests' settlements in one database transaction.

Each request hands its usage record to the Settler and waits. One task drains what
has queued while the previous commit was in flight, up to limits.settle_batch_max,
and commits it as one batch: at light load one request per commit, under load the
commit is shared. Only after the commit are the batch's holds released and the
waiters woken (then the observers told), so a cost a client sees is in the book.

Once enqueued, a record is never dropped. It ends in exactly one of:
- committed (the waiter, if still waiting, gets the SettleResult);
- waiting in the retry queue while the ledger is unavailable (LedgerUnavailable:
  retried with a doubling back-off up to settle_retry_delay_max_s; the waiter
  hears SettlementDelayed at once and shows no cost);
- refused for good (LedgerFailure, or any unexpected error: logged with its
  traceback, the waiter hears SettlementFailed, the hold is released and the
  record is appended to the settle journal for replay once fixed);
- at shutdown, after settle_shutdown_timeout_s, appended to the settle journal
  (gateway/money/journal.py), which the next start or `meterway journal replay`
  commits.

The loop cannot die of a batch: every batch's errors are caught. If the task
ends anyway (a bug, a stray cancellation), it is restarted and the batch it
held goes back to the retry queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from config.settings import Settings
from gateway.money.journal import Journal, keep_or_log
from gateway.money.replay import Replayer, ReplayReport, release_holds, release_record_holds
from ledger.book import Book, SettleOutcome, SettleResult, UsageRecord
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldStore, HoldStoreUnavailable

log = logging.getLogger("meterway.settlement")


@dataclass(frozen=True)
class SettleLimits:
    batch_max: int
    queue_max: int
    retry_max: int  # retries of a batch in the loop, before it waits in the retry queue
    retry_delay_s: float
    retry_delay_max_s: float = 5.0
    retry_queue_max: int = 20_000
    stuck_after_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    # A waiter hears SettlementDelayed once its settlement is this old (checked
    # every WAIT_CHECKS_PER_DEADLINE-th of it, so at most 1.25x late): one
    # timer for all waiters instead of one per request.
    wait_max_s: float = 10.0


WAIT_CHECKS_PER_DEADLINE = 4


class SettlementUnavailable(Exception):
    """The settlement is not committed (yet): the caller must show no cost."""


class SettlementDelayed(SettlementUnavailable):
    """The ledger is unavailable or slow; the record is kept and committed later
    (or journaled at shutdown and committed at the next start)."""


class SettlementFailed(SettlementUnavailable):
    """The ledger refused the batch for good, or settling it hit a bug; the
    records are in the settle journal for an operator to replay once fixed."""


@dataclass(eq=False)
class _Pending:
    record: UsageRecord
    future: asyncio.Future[SettleResult]
    queued_at: float


@dataclass(frozen=True)
class SettlerHealth:
    running: bool
    queued: int
    retrying: int
    oldest_age_s: float
    restarts: int
    problems: tuple[str, ...]


def _retrieve(future: asyncio.Future[SettleResult]) -> None:
    # A waiter past its deadline no longer reads it: keeps asyncio from logging "never retrieved".
    if not future.cancelled():
        future.exception()


class Settler:
    def __init__(self, book: Book, holds: HoldStore, limits: SettleLimits, journal: Journal | None = None) -> None:
        self._book = book
        self._holds = holds
        self._limits = limits
        self._journal = journal
        self._queue: deque[_Pending] = deque()
        self._retry: deque[_Pending] = deque()  # waiting for the ledger, oldest first
        self._current: list[_Pending] = []  # the batch being written
        self._finishing: set[asyncio.Task[None]] = set()  # committed batches releasing their holds
        self._unfinished = 0  # records neither committed-and-finished nor handed to the journal
        self._idle = asyncio.Event()
        self._idle.set()
        self._wakeup = asyncio.Event()
        self._retry_delay_s = self._first_retry_delay()
        self._retry_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._deadlines: asyncio.Task[None] | None = None
        self._closing = False
        self._closed = False
        self.batches_committed = 0
        self.restarts = 0
        # Called after each commit, synchronous and cheap (auto-reload's threshold check).
        self.observers: list[Callable[[Sequence[UsageRecord], Sequence[SettleResult]], None]] = []

    # --- the callers' side ----------------------------------------------------

    def start(self) -> None:
        assert self._task is None
        self._launch(0.0)
        self._deadlines = asyncio.get_running_loop().create_task(self._expire_waiters_forever(),
                                                                 name="meterway-settle-deadlines")

    @property
    def full(self) -> bool:
        """No room for more settlements: new requests must be refused before any upstream work."""
        return len(self._queue) >= self._limits.queue_max or len(self._retry) >= self._limits.retry_queue_max

    def enqueue(self, record: UsageRecord) -> asyncio.Future[SettleResult]:
        """Take a settlement; from now on it is committed or journaled, whatever becomes of the caller.

        Never blocks and never refuses: the bound is applied before the request
        is forwarded (see `full`), because by now the upstream has done the work.
        The future resolves after the commit, or fails with a SettlementUnavailable.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[SettleResult] = loop.create_future()
        future.add_done_callback(_retrieve)
        if self._closed:
            self._journal_now([record], "arrived after the settler closed")
            future.set_exception(SettlementDelayed("the gateway is shutting down; the settlement is journaled"))
            return future
        self._queue.append(_Pending(record, future, loop.time()))
        self._unfinished += 1
        self._idle.clear()
        self._wakeup.set()
        return future

    async def drain(self) -> None:
        """Wait until every pending settlement is committed or journaled (shutdown, tests)."""
        await self._idle.wait()

    def health(self) -> SettlerHealth:
        now = asyncio.get_running_loop().time()
        heads = [q[0].queued_at for q in (self._current, self._retry, self._queue) if q]
        oldest = now - min(heads) if heads else 0.0
        running = self._task is not None and not self._task.done()
        problems = []
        if not running:
            problems.append("the settle loop is not running")
        if self._retry:
            problems.append(f"{len(self._retry)} settlements wait for the ledger to come back")
        if oldest > self._limits.stuck_after_s:
            problems.append(f"the oldest pending settlement waits for {oldest:.1f} s")
        if self.full:
            problems.append("the settle backlog is full: new requests are refused")
        return SettlerHealth(running, len(self._queue) + len(self._current), len(self._retry), oldest,
                             self.restarts, tuple(problems))

    async def close(self) -> None:
        """Give pending settlements settle_shutdown_timeout_s to commit, then journal the rest."""
        self._closing = True
        self._wakeup.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._limits.shutdown_timeout_s):
                await self.drain()
        tasks = [t for t in (self._task, self._deadlines, *self._finishing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        left = [*self._current, *self._retry, *self._queue]
        self._current, self._retry, self._queue = [], deque(), deque()
        self._closed = True
        if left:
            # A record whose write was cut off here may have committed: replay
            # is idempotent by request id, so journaling it too is safe.
            await self._journal_records([p.record for p in left], "not committed before shutdown")
            error = SettlementDelayed("the gateway is shutting down; the settlement is journaled")
            for pending in left:
                if not pending.future.done():
                    pending.future.set_exception(error)
        self._unfinished = 0
        self._idle.set()

    async def _expire_waiters_forever(self) -> None:
        interval_s = self._limits.wait_max_s / WAIT_CHECKS_PER_DEADLINE
        while True:
            await asyncio.sleep(interval_s)
            try:
                self._expire_waiters(asyncio.get_running_loop().time())
            except Exception:  # never let a bug here leave waiters without a deadline
                log.exception("settle deadline check failed")

    def _expire_waiters(self, now: float) -> None:
        """Waiters of settlements older than wait_max_s stop waiting; the settlements go on."""
        cutoff = now - self._limits.wait_max_s
        error = SettlementDelayed(f"not committed within {self._limits.wait_max_s:g} s; it is still being settled")
        for pending in self._current:
            if pending.queued_at <= cutoff and not pending.future.done():
                pending.future.set_exception(error)
        for pending in self._queue:  # oldest first
            if pending.queued_at > cutoff:
                break
            if not pending.future.done():
                pending.future.set_exception(error)

    # --- the loop ---------------------------------------------------------------

    def _launch(self, delay_s: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(delay_s), name="meterway-settler")
        self._task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing:
            return
        error = None if task.cancelled() else task.exception()
        log.error("the settle loop ended unexpectedly (%s); restarting it", "cancelled" if error is None else repr(error),
                  exc_info=error)
        if self._current:
            self._retry.extendleft(reversed(self._current))  # unfinished: back to the front
            self._current = []
        self.restarts += 1
        self._launch(self._limits.retry_delay_s)  # a pause, so a loop that dies at once cannot spin

    async def _run(self, delay_s: float) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        while True:
            batch, retrying = await self._next_batch()
            self._current = batch
            try:
                await self._settle(batch, retrying)
            except Exception:
                log.exception("the settle loop failed on a batch of %d; giving it up", len(batch))
                if self._current:
                    await self._give_up(self._current, "settle loop error")
            self._current = []

    async def _next_batch(self) -> tuple[list[_Pending], bool]:
        loop = asyncio.get_running_loop()
        while True:
            if self._retry and loop.time() >= self._retry_at:
                return self._take(self._retry), True
            if self._queue:
                return self._take(self._queue), False
            self._wakeup.clear()
            timeout = max(self._retry_at - loop.time(), 0.0) if self._retry else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _take(self, source: deque[_Pending]) -> list[_Pending]:
        return [source.popleft() for _ in range(min(len(source), self._limits.batch_max))]

    async def _settle(self, batch: list[_Pending], retrying: bool) -> None:
        # While others already wait for the ledger, one attempt: it is known
        # to be down, and the waiters should hear so at once.
        attempts = 1 if retrying or self._retry else self._limits.retry_max + 1
        try:
            results = await self._write([p.record for p in batch], attempts)
        except LedgerUnavailable as exc:
            self._current = []
            self._defer(batch, exc, retrying)
            return
        except Exception as exc:
            self._current = []
            log.exception("the ledger refused a batch of %d settlements; their requests show no cost, "
                          "the records go to the settle journal", len(batch))
            await self._give_up(batch, f"{type(exc).__name__}: {exc}")
            return
        self._current = []
        if self._retry:  # the ledger answers again: the retry queue goes next, now
            self._retry_delay_s = self._first_retry_delay()
            self._retry_at = 0.0
        task = asyncio.get_running_loop().create_task(self._finish(batch, results))
        self._finishing.add(task)  # the next batch may commit while this one's holds are released
        task.add_done_callback(self._finishing.discard)

    async def _write(self, records: list[UsageRecord], attempts: int) -> list[SettleResult]:
        for attempt in range(attempts):
            try:
                results = await self._book.settle_batch(records)
                # Both books assert the postconditions (ledger.book.check_settle_results).
                return results
            except LedgerUnavailable as exc:
                log.warning("settle batch of %d failed (attempt %d of %d): %s", len(records), attempt + 1, attempts, exc)
                if attempt + 1 == attempts:
                    raise
                await asyncio.sleep(min(self._limits.retry_delay_s * 2**attempt, self._limits.retry_delay_max_s))
        raise AssertionError("attempts must be at least 1")

    def _first_retry_delay(self) -> float:
        return min(self._limits.retry_delay_s * 2**self._limits.retry_max, self._limits.retry_delay_max_s) or 0.01

    def _defer(self, batch: list[_Pending], exc: LedgerUnavailable, retrying: bool) -> None:
        now = asyncio.get_running_loop().time()
        if retrying:
            self._retry.extendleft(reversed(batch))  # still the oldest: first again
            self._retry_delay_s = min(self._retry_delay_s * 2, self._limits.retry_delay_max_s)
            self._retry_at = now + self._retry_delay_s
        else:
            if not self._retry:  # else the retry already scheduled stands: new failures must not push it back
                self._retry_at = now + self._retry_delay_s
            self._retry.extend(batch)
        log.warning("ledger unavailable (%s): %d settlements wait for it, next try in %.1f s",
                    exc, len(self._retry), self._retry_delay_s)
        error = SettlementDelayed("the ledger is unavailable; the settlement is kept and committed when it is back")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)

    async def _give_up(self, batch: list[_Pending], reason: str) -> None:
        self._current = []
        error = SettlementFailed(f"the settlement could not be committed ({reason}); it is kept in the settle journal")
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(error)
        try:
            await self._journal_records([p.record for p in batch], reason)
            for pending in batch:  # nothing will settle these holds now; free the money
                with contextlib.suppress(Exception):
                    await release_record_holds(self._holds, pending.record)
        finally:
            self._finished(len(batch))

    async def _finish(self, batch: list[_Pending], results: list[SettleResult]) -> None:
        """Release the committed batch's holds, then wake its waiters (always, even if Redis fails)."""
        unpaid = [p.record for p, r in zip(batch, results, strict=True) if r.outcome is SettleOutcome.UNKNOWN_PAYEE]
        if unpaid:  # nothing written for these: kept in the journal until the payee account exists
            await self._journal_records(unpaid, "a payee account does not exist")
        try:
            await release_holds(self._holds, [p.record for p in batch], results)
        except HoldStoreUnavailable as exc:
            # The debits are committed; the holds expire on their own and the
            # mirror catches up with the next (balance, version) it sees.
            log.warning("hold release failed after settlement; the holds will expire: %s", exc)
        except Exception:
            log.exception("hold release failed after settlement; the holds will expire")
        finally:
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
            self.batches_committed += 1
            self._finished(len(batch))
            records = [p.record for p in batch] if self.observers else []
            for observe in self.observers:
                try:
                    observe(records, results)
                except Exception:  # an observer's bug must not touch settlement
                    log.exception("a settlement observer failed")

    def _finished(self, count: int) -> None:
        self._unfinished -= count
        if self._unfinished <= 0:
            self._unfinished = 0
            self._idle.set()

    # --- the journal --------------------------------------------------------------

    async def replay_journal(self) -> ReplayReport:
        """Commit the settle journal (gateway/money/replay.py); idempotent by request id."""
        return await self.replayer().run()

    def replayer(self) -> Replayer:
        return Replayer(self._book, self._holds, self._journal, self._limits.batch_max)

    async def _journal_records(self, records: list[UsageRecord], reason: str) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._journal_now, records, reason)

    def _journal_now(self, records: list[UsageRecord], reason: str) -> None:
        keep_or_log(self._journal, records, reason)


def settler_for(book: Book, holds: HoldStore, settings: Settings) -> Settler:
    limits = settings.limits
    return Settler(book, holds, SettleLimits(
        batch_max=limits.settle_batch_max, queue_max=limits.settle_queue_max, retry_max=limits.settle_retry_max,
        retry_delay_s=limits.settle_retry_delay_s, retry_delay_max_s=limits.settle_retry_delay_max_s,
        retry_queue_max=limits.settle_retry_queue_max, stuck_after_s=limits.settle_stuck_after_s,
        shutdown_timeout_s=limits.settle_shutdown_timeout_s, wait_max_s=limits.settle_wait_max_s,
    ), Journal(settings.journal_path))
