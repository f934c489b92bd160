"""The settle journal: usage records that could not be committed, kept on local disk.

At shutdown the Settler gives pending settlements settle_shutdown_timeout_s to
commit, then appends the rest here; a settlement the ledger refused for good
(LedgerFailure, a bug) is appended at once. The upstream has done that work,
so its charge must survive the process. The next start (before serving) and
`meterway journal replay` commit the journal; settle_batch is idempotent by
request id, so replaying a record that was committed after all changes nothing.

Format: one UsageRecord per line, as JSON (UsageRecord.as_dict()), each append
fsync'd before it counts. A crash in the middle of an append leaves a partial
last line: replay skips it (that record had not been saved) and the next
append starts on a fresh line.

Several processes (`serve --workers N`, a gateway beside the CLI) never share
a file for writing: each appends to its own, "<stem>.<pid><suffix>", under an
exclusive flock. Replay takes each file's lock without waiting (a file being
replayed elsewhere is skipped), then removes the file or atomically replaces it
(write, fsync, rename) with the records that must stay. A writer that gets the
lock on a file replay has just removed sees the inode change and reopens.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from ledger.book import UsageRecord

log = logging.getLogger("meterway.journal")


@dataclass(frozen=True)
class JournalEntry:
    """One line: the record, or None when it cannot be read (kept as raw bytes)."""

    raw: bytes
    record: UsageRecord | None


@dataclass(frozen=True)
class JournalFile:
    path: Path
    entries: list[JournalEntry]
    partial_tail: bool  # a last line cut short by a crash, skipped


class Journal:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def own_file(self) -> Path:
        """This process's file: appends from other processes never interleave with ours."""
        return self.path.with_name(f"{self.path.stem}.{os.getpid()}{self.path.suffix}")

    def files(self) -> list[Path]:
        """Every journal file next to path: the plain one and each process's."""
        if not self.path.parent.is_dir():
            return []
        found = set(self.path.parent.glob(f"{self.path.stem}.*{self.path.suffix}"))
        found.add(self.path)
        return sorted(p for p in found if p.is_file() and _is_journal_name(p, self.path))

    def append(self, records: Sequence[UsageRecord]) -> Path | None:
        """Append records to this process's file, durably (fsync) before returning. Blocking."""
        if not records:
            return None
        data = b"".join(orjson.dumps(record.as_dict()) + b"\n" for record in records)
        path = self.own_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT) as fd:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # after a crash mid-line: never glue onto the partial line
            _write_all(fd, data)
            os.fsync(fd)
        _fsync_dir(path.parent)  # the file's name is durable too
        return path

    @contextlib.contextmanager
    def claim(self, path: Path) -> Iterator[JournalFile | None]:
        """Lock one file for replay and read it; None if another process holds it.

        On leaving, call keep() first to say what stays; a file with nothing
        kept is removed.
        """
        with contextlib.ExitStack() as stack:
            try:
                fd: int | None = stack.enter_context(_locked(path, os.O_RDWR, wait=False))
            except (BlockingIOError, FileNotFoundError):
                fd = None  # being replayed by another process, or already gone
            yield None if fd is None else _read(path, fd)

    def keep(self, path: Path, entries: Sequence[JournalEntry]) -> None:
        """Replace path by the given entries (or remove it when none), atomically.

        Call only inside claim(path), which holds the lock.
        """
        if not entries:
            path.unlink(missing_ok=True)
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, b"".join(entry.raw + b"\n" for entry in entries))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        _fsync_dir(path.parent)


def _is_journal_name(candidate: Path, base: Path) -> bool:
    if candidate == base:
        return True
    middle = candidate.name[len(base.stem) + 1: len(candidate.name) - len(base.suffix)]
    return middle.isdigit()  # "<stem>.<pid><suffix>" only, never a temp or foreign file


@contextlib.contextmanager
def _locked(path: Path, flags: int, wait: bool = True) -> Iterator[int]:
    """An open descriptor of path under an exclusive flock, still naming path."""
    while True:
        fd = os.open(path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                yield fd
                return
        finally:
            os.close(fd)  # releases the lock
        if not flags & os.O_CREAT:
            raise FileNotFoundError(path)  # replaced or removed by a replay: nothing left to read


def _read(path: Path, fd: int) -> JournalFile:
    size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0) if size else b""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, as every complete append does
    entries = [_entry(line) for line in lines if line.strip()]
    partial = bool(tail.strip())
    if partial:
        entry = _entry(tail)
        if entry.record is not None:
            entries.append(entry)  # complete JSON, only the newline was lost
            partial = False
        else:
            log.warning("journal %s: skipping a partial last line of %d bytes (a crash during an append)", path, len(tail))
    return JournalFile(path, entries, partial)


def _entry(line: bytes) -> JournalEntry:
    try:
        return JournalEntry(line, UsageRecord(**orjson.loads(line)))
    except (orjson.JSONDecodeError, TypeError, AssertionError, ValueError):
        return JournalEntry(line, None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def keep_or_log(journal: Journal | None, records: Sequence[UsageRecord], reason: str) -> None:
    """Append to the journal; if even that fails, the records go to the log in full (never silently lost)."""
    try:
        if journal is None:
            raise OSError("no settle journal configured")
        path = journal.append(records)
        log.warning("%d settlements journaled to %s (%s); `meterway journal replay` or the next start commits them",
                    len(records), path, reason)
    except OSError:
        log.critical("%d settlements could not be journaled (%s); their records follow", len(records), reason,
                     exc_info=True)
        for record in records:
            log.critical("unjournaled settlement: %s", orjson.dumps(record.as_dict()).decode())
