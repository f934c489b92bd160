"""`meterway journal replay`: commit the settle journal's leftovers (named so, not journal.py,
to keep it apart from gateway/money/journal.py, the journal itself)."""

from __future__ import annotations

import argparse
from typing import Any

from config.settings import Settings


async def journal_replay(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    from gateway.money.settlement import settler_for

    report = await settler_for(ops.book, ops.holds, settings).replay_journal()
    print(f"journal {settings.journal_path}: {report.summary()}")
    return 1 if report.kept or report.busy_files else 0
