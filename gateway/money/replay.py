"""Committing the settle journal: at start (before serving) and by `meterway journal replay`.

Each journal file not being replayed by another process is claimed, its
records committed in batches (settle_batch is idempotent by request id, so a
record committed before answers REPLAY), and the file removed or rewritten
with what must stay: records the ledger refused, and unreadable lines.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.money.journal import Journal, JournalEntry
from ledger.book import Book, SettleOutcome, SettleResult, UsageRecord
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldSettlement, HoldStore, cap_account

log = logging.getLogger("meterway.settlement")

# Outcomes of settle_batch after which the book holds nothing of the record.
NOTHING_WRITTEN = frozenset({SettleOutcome.UNKNOWN_WALLET, SettleOutcome.UNKNOWN_PAYEE})


@dataclass
class ReplayReport:
    """What a journal replay did; settled + already + conflicts + unknown_wallets + kept == records."""

    files: int = 0
    records: int = 0
    settled: int = 0  # committed now
    already: int = 0  # committed before (REPLAY): nothing changed
    conflicts: int = 0  # committed before with another cost: nothing changed, logged
    unknown_wallets: int = 0  # the wallet does not exist: nothing to charge, logged
    kept: int = 0  # refused by the ledger or unreadable: still in the journal
    partial_lines: int = 0  # cut short by a crash while being written: skipped
    busy_files: int = 0  # being replayed by another process: left to it
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.settled} settled, {self.already} already settled, {self.conflicts} conflicts, "
                f"{self.unknown_wallets} unknown wallets, {self.kept} kept in the journal, "
                f"{self.partial_lines} partial lines skipped ({self.records} records in {self.files} files"
                f"{f', {self.busy_files} busy' if self.busy_files else ''})")


class Replayer:
    def __init__(self, book: Book, holds: HoldStore, journal: Journal | None, batch_max: int) -> None:
        assert batch_max > 0, batch_max
        self._book = book
        self._holds = holds
        self._journal = journal
        self._batch_max = batch_max

    async def run(self) -> ReplayReport:
        """Commit every journal file not being replayed elsewhere; idempotent by request id.

        Raises LedgerUnavailable if the ledger goes away mid-way; what was not
        committed stays in the journal.
        """
        report = ReplayReport()
        if self._journal is None:
            return report
        for path in self._journal.files():
            with self._journal.claim(path) as claimed:
                if claimed is None:
                    report.busy_files += 1
                    continue
                report.files += 1
                report.partial_lines += int(claimed.partial_tail)
                kept = [entry for entry in claimed.entries if entry.record is None]
                if kept:
                    log.error("journal %s: %d unreadable lines kept for an operator", path, len(kept))
                readable = [entry for entry in claimed.entries if entry.record is not None]
                report.records += len(readable)
                try:
                    await self._replay_entries(readable, report, kept)
                finally:
                    report.kept += len(kept)
                    self._journal.keep(path, kept)
        return report

    async def _replay_entries(self, entries: list[JournalEntry], report: ReplayReport, kept: list[JournalEntry]) -> None:
        """Commit entries; what must stay in the journal is appended to kept (also when raising)."""
        seen: set[str] = set()
        unique = []
        for entry in entries:
            assert entry.record is not None
            if entry.record.request_id in seen:
                report.already += 1  # the same record journaled twice: one settlement
            else:
                seen.add(entry.record.request_id)
                unique.append(entry)
        step = self._batch_max
        for start in range(0, len(unique), step):
            chunk = unique[start: start + step]
            try:
                kept += await self._replay_chunk(chunk, report)
            except LedgerUnavailable:
                kept += unique[start:]
                raise
            except Exception:
                # One bad record must not keep the others out: try each alone.
                for entry in chunk:
                    try:
                        kept += await self._replay_chunk([entry], report)
                    except LedgerUnavailable:
                        kept += unique[start + chunk.index(entry):]
                        raise
                    except Exception as exc:
                        log.exception("journal replay: %s refused; kept in the journal", entry.record and entry.record.request_id)
                        report.errors.append(f"{entry.record and entry.record.request_id}: {exc}")
                        kept.append(entry)

    async def _replay_chunk(self, chunk: list[JournalEntry], report: ReplayReport) -> list[JournalEntry]:
        """Commit a chunk; returns the entries that must stay in the journal (a payee account missing)."""
        records = [entry.record for entry in chunk if entry.record is not None]
        stay = []
        results = await self._book.settle_batch(records)
        for entry, record, result in zip(chunk, records, results, strict=True):
            if result.outcome is SettleOutcome.SETTLED:
                report.settled += 1
            elif result.outcome is SettleOutcome.REPLAY:
                report.already += 1
            elif result.outcome is SettleOutcome.CONFLICT:
                report.conflicts += 1
                log.error("journal replay: %s was settled before with another cost; left as it was", record.request_id)
            elif result.outcome is SettleOutcome.UNKNOWN_PAYEE:
                # A pricing bug or an account not created yet: keep it until an operator fixes that.
                stay.append(entry)
                log.error("journal replay: %s names a payee account that does not exist; kept in the journal",
                          record.request_id)
            else:
                report.unknown_wallets += 1
                log.error("journal replay: %s names unknown wallet %r; nothing charged", record.request_id, record.wallet_id)
        try:
            await release_holds(self._holds, records, results)
        except Exception as exc:
            log.warning("journal replay: hold release failed; the holds will expire: %s", exc)
        return stay




async def release_holds(holds: HoldStore, records: Sequence[UsageRecord], results: Sequence[SettleResult]) -> None:
    """Settle the holds of committed records (the mirror learns the new balance) or release them.

    A capped request held against each of its caps too (ledger/caps.py): a cap the
    settlement moved is settled like the wallet; any other cap hold is released.
    """
    # A free call (nothing held, nothing charged) never had a hold and moved no money: nothing to tell the store.
    settled = []
    unknown = []
    caps_left = []
    for record, result in zip(records, results, strict=True):
        if result.outcome in NOTHING_WRITTEN:
            unknown.append(record)
            continue
        if record.held_nusd or result.charged_nusd or result.shortfall_nusd:
            settled.append(HoldSettlement(record.wallet_id, record.request_id, result.balance_nusd, result.version))
        if record.caps:
            moved = {cap.cap_id: cap for cap in result.caps}
            settled += [HoldSettlement(cap_account(record.wallet_id, c.cap_id), record.request_id, c.remaining_nusd,
                                       c.version) for c in result.caps]
            caps_left += [(cap_account(record.wallet_id, cap_id), record.request_id)
                          for cap_id in record.caps if cap_id not in moved]
    await holds.settle_many(settled)
    for record in unknown:
        await release_record_holds(holds, record)
    for cap_id, hold_id in caps_left:
        await holds.release(cap_id, hold_id)


async def release_record_holds(holds: HoldStore, record: UsageRecord) -> None:
    """Release every hold a request took: its wallet's and its caps'."""
    await holds.release(record.wallet_id, record.request_id)
    for cap_id in record.caps:
        await holds.release(cap_account(record.wallet_id, cap_id), record.request_id)


async def replay_at_start(replayer: Replayer) -> ReplayReport | None:
    """Commit the settle journal before serving; a failure is logged and the journal kept for later."""
    try:
        report = await replayer.run()
    except Exception:
        log.exception("settle journal replay at start failed; the journal is kept (`meterway journal replay` retries)")
        return None
    if report.files or report.busy_files:
        level = logging.WARNING if report.kept or report.partial_lines else logging.INFO
        log.log(level, "settle journal replayed at start: %s", report.summary())
    return report
