"""The settle journal on disk: durable appends, one file per process, crash-cut lines, replay by command."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import orjson

from gateway.money.journal import Journal
from ledger.book import UsageRecord

RECORD = UsageRecord(
    request_id="req-0", key_id="key-1", wallet_id="acme", bot=None, model="flat-fee", upstream="fake",
    endpoint="chat", status="ok", usage_source="upstream", prompt_tokens=3, cached_tokens=0, completion_tokens=2,
    input_per_1m_nusd=0, cached_input_per_1m_nusd=0, output_per_1m_nusd=0, per_call_nusd=10_000_000,
    cost_nusd=10_000_000, held_nusd=10_000_000, latency_ms=1.5, upstream_latency_ms=1.0,
)


def record(n: int, prefix: str = "req") -> UsageRecord:
    return replace(RECORD, request_id=f"{prefix}-{n}")


def read_all(journal: Journal) -> list[str]:
    ids = []
    for path in journal.files():
        with journal.claim(path) as claimed:
            assert claimed is not None
            ids += [e.record.request_id for e in claimed.entries if e.record is not None]
    return ids


def test_a_partial_last_line_is_skipped_and_the_next_append_starts_a_fresh_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "meterway-journal.jsonl")
    path = journal.append([record(1)])
    assert path == tmp_path / f"meterway-journal.{os.getpid()}.jsonl"
    with open(path, "ab") as cut:  # a crash in the middle of an append
        cut.write(orjson.dumps(record(2).as_dict())[:40])
    journal.append([record(3)])
    with journal.claim(path) as claimed:
        assert claimed is not None
        assert [e.record.request_id if e.record else None for e in claimed.entries] == ["req-1", None, "req-3"]
    path.write_bytes(path.read_bytes().replace(b"\n" + orjson.dumps(record(2).as_dict())[:40], b"")
                     + orjson.dumps(record(4).as_dict())[:25])
    with journal.claim(path) as claimed:
        assert claimed is not None and claimed.partial_tail
        assert [e.record.request_id for e in claimed.entries if e.record] == ["req-1", "req-3"]
        journal.keep(path, [])
    assert journal.files() == []


def _append_many(path: str, start: int) -> None:
    journal = Journal(path)
    for n in range(start, start + 40):
        journal.append([record(n)])


def test_processes_appending_at_once_never_corrupt_the_journal(tmp_path: Path) -> None:
    base = str(tmp_path / "meterway-journal.jsonl")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(base, 1000 * i)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    journal = Journal(base)
    assert len(journal.files()) == 3, "one file per process"
    assert sorted(read_all(journal)) == sorted(f"req-{1000 * i + n}" for i in range(3) for n in range(40))


def test_an_append_racing_a_replay_is_never_lost(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "meterway-journal.jsonl")
    replayed: list[str] = []
    done = threading.Event()

    def replay_forever() -> None:
        while not done.is_set():
            for path in journal.files():
                with journal.claim(path) as claimed:
                    if claimed is not None:
                        replayed.extend(e.record.request_id for e in claimed.entries if e.record is not None)
                        journal.keep(path, [])  # removed: the writer must notice and start a new file

    replayer = threading.Thread(target=replay_forever)
    replayer.start()
    try:
        for n in range(300):
            journal.append([record(n)])
    finally:
        done.set()
        replayer.join()
    replayed += read_all(journal)
    assert sorted(replayed) == sorted(f"req-{n}" for n in range(300))


def meterway(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("MW_")}
    env["MW_SQLITE_PATH"] = str(tmp_path / "cli.sqlite3")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=60)


def test_journal_replay_commits_once_and_reports_the_count(tmp_path: Path) -> None:
    assert meterway(tmp_path, "wallet", "create", "acme").returncode == 0
    assert meterway(tmp_path, "wallet", "credit", "acme", "1").returncode == 0
    # The default journal lives next to the SQLite file.
    journal = Journal(tmp_path / "meterway-journal.jsonl")
    journal.append([record(1), record(2)])
    saved = journal.files()[0].read_bytes()

    first = meterway(tmp_path, "journal", "replay")
    assert first.returncode == 0, first.stderr
    assert "2 settled, 0 already settled" in first.stdout and "2 records in 1 files" in first.stdout
    assert journal.files() == []
    assert "balance:   0.98 USD" in meterway(tmp_path, "wallet", "show", "acme").stdout

    journal.own_file().write_bytes(saved)
    again = meterway(tmp_path, "journal", "replay")
    assert "0 settled, 2 already settled" in again.stdout, again.stdout
    assert "balance:   0.98 USD" in meterway(tmp_path, "wallet", "show", "acme").stdout
    assert "0 records in 0 files" in meterway(tmp_path, "journal", "replay").stdout
