"""Releasing holds nobody settled (a gateway died mid-request), within a bound.

An expired hold is released, and the wallet's mirrored balance is re-read from
the book, because the request may have been settled by a process that died
before it could update the mirror.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from gateway.metrics import Metrics
from ledger.book import Book
from ledger.errors import LedgerUnavailable
from ledger.holds import HoldStore, HoldStoreUnavailable, is_cap_account
from ledger.store import LedgerStore

log = logging.getLogger("meterway.sweeper")


async def sweep_once(book: Book, holds: HoldStore, batch_max: int, metrics: Metrics | None = None) -> int:
    expired = await holds.expire_due(batch_max)
    # A cap's account needs no refresh: its mirror is read from its row when a request next needs it.
    for wallet_id in sorted({hold.wallet_id for hold in expired if not is_cap_account(hold.wallet_id)}):
        wallet = await book.wallet(wallet_id)
        if wallet is not None:
            await holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
    if metrics is not None and expired:
        metrics.holds_expired.inc(len(expired))
    return len(expired)


async def sweep_forever(book: Book, holds: HoldStore, interval_s: float, batch_max: int, metrics: Metrics) -> None:
    while True:
        try:
            while await sweep_once(book, holds, batch_max, metrics) == batch_max:
                pass  # more are due: keep going without waiting
        except (HoldStoreUnavailable, LedgerUnavailable) as exc:
            log.warning("hold sweep failed, will retry: %s", exc)
        except Exception:
            # A permanent ledger error or a bug must not end the sweep for good:
            # holds nobody settles would then never be released.
            log.exception("hold sweep failed unexpectedly, will retry")
        await asyncio.sleep(interval_s)


async def expire_credit_forever(book: LedgerStore, holds: HoldStore, interval_s: float, batch_max: int) -> None:
    """Credit past its validity leaves its wallet (an `expiry` posting); the hold mirror then follows."""
    while True:
        try:
            expired = await book.expire_lots(datetime.now(UTC), batch_max)
            for wallet_id in sorted({lot.wallet_id for lot in expired}):
                wallet = await book.wallet(wallet_id)
                if wallet is not None:
                    await holds.sync(wallet_id, wallet.balance_nusd, wallet.version)
            if expired:
                log.info("credit expired: %d lots, %d nUSD", len(expired), sum(lot.amount_nusd for lot in expired))
        except (HoldStoreUnavailable, LedgerUnavailable) as exc:
            log.warning("credit expiry sweep failed, will retry: %s", exc)
        except Exception:
            log.exception("credit expiry sweep failed unexpectedly, will retry")
        await asyncio.sleep(interval_s)
