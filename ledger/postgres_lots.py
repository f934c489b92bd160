"""Credit lots on Postgres (ledger/lots.py has the rules): open, reconcile, expire.

Writers lock the wallet's account row first (and sys:funding with it, in id
order, when they post an expiry: the ledger's one lock order), so no transfer
of the wallet can commit while they reconcile; lot rows are only written under
that lock. The read-only answers (lots, next_expiry) take no lock: they run in
one REPEATABLE READ snapshot and write nothing, so the overview never waits on
settlement nor makes it wait.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

import asyncpg

from ledger import lots as rules
from ledger import postgres_postings as postings
from ledger.book import FUNDING_ACCOUNT, Leg, Posting, TransferKind, TransferOutcome
from ledger.errors import NotAWallet
from ledger.lots import Checkpoint, ExpiredLot, Lot, LotConflict, NextExpiry, TailNow
from ledger.postgres_access import PostgresAccess
from ledger.postings import check_posting_replay
from ledger.times import parse_utc, utc_text

T = TypeVar("T")
# Debits that count as spending: everything leaving the wallet but its own expiry postings.
_SPENT = "NOT (kind = 'expiry' AND posting_id LIKE 'expiry:%')"
_TAIL = (
    "SELECT COUNT(*) FILTER (WHERE created_at >= $2::timestamptz), COALESCE(SUM(spent) FILTER (WHERE created_at >= $2::timestamptz), 0)::bigint,"
    " COUNT(*) FILTER (WHERE created_at >= $3::timestamptz), COALESCE(SUM(spent) FILTER (WHERE created_at >= $3::timestamptz), 0)::bigint FROM ("
    f" SELECT created_at, CASE WHEN {_SPENT} THEN amount_nusd ELSE 0 END AS spent FROM mw_transfers"
    "  WHERE debit_account = $1 AND created_at >= LEAST($2::timestamptz, $3::timestamptz)"
    " UNION ALL SELECT created_at, 0 FROM mw_transfers WHERE credit_account = $1 AND created_at >= LEAST($2::timestamptz, $3::timestamptz)) t"
)
_CHECKPOINT_WRITE = (
    "INSERT INTO mw_lot_wallets (wallet_id, balance_nusd, version, tail_start, tail_count, tail_debits_nusd,"
    " cum_debits_nusd) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (wallet_id) DO UPDATE SET"
    " balance_nusd = excluded.balance_nusd, version = excluded.version, tail_start = excluded.tail_start,"
    " tail_count = excluded.tail_count, tail_debits_nusd = excluded.tail_debits_nusd,"
    " cum_debits_nusd = excluded.cum_debits_nusd, updated_at = now()"
)


class PostgresLots(PostgresAccess):
    """Mixed into PostgresBook, which provides _with (a pooled connection, errors translated)."""

    async def add_lot(self, posting: Posting, wallet_id: str, lot_id: str, expires_at: datetime) -> TransferOutcome:
        amount = _net_credit(posting, wallet_id)
        transfers = posting.transfers()

        async def write(conn: asyncpg.Connection) -> TransferOutcome:
            try:
                async with conn.transaction():
                    outcome = await postings.write_posting(conn, posting.posting_id, transfers)
                    opened: TransferOutcome | None = await open_lot(conn, wallet_id, lot_id, amount, expires_at)
                    _check_lot_with_credit(outcome, opened, posting, lot_id)  # inside: a refusal rolls back
            except asyncpg.UniqueViolationError:
                # A concurrent twin committed first: answer as a retry would.
                check_posting_replay(posting.posting_id, transfers,
                                     await postings.stored_posting(conn, posting.posting_id, [t.transfer_id for t in transfers]))
                outcome, opened = TransferOutcome.EXISTS, await _same_lot(conn, wallet_id, lot_id, amount, expires_at)
                _check_lot_with_credit(outcome, opened, posting, lot_id)
            assert opened is not None
            return opened

        return await self._with(write)

    async def lots(self, wallet_id: str) -> list[Lot]:
        async def read(conn: asyncpg.Connection) -> list[Lot]:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                if await conn.fetchval("SELECT 1 FROM mw_lot_wallets WHERE wallet_id = $1", wallet_id) is None:
                    return []  # never had a lot
                return (await _reconciled(conn, wallet_id))[1]

        return await self._with(read)

    async def next_expiry(self, wallet_id: str) -> NextExpiry | None:
        return rules.next_expiry(await self.lots(wallet_id))

    async def reconcile_lots(self, wallet_id: str) -> list[Lot]:
        """Move the wallet's checkpoint to now (what lots() computes, kept), so later reads scan less."""
        async def run(conn: asyncpg.Connection) -> list[Lot]:
            async with conn.transaction():
                await _lock_accounts(conn, [wallet_id])
                if await conn.fetchval("SELECT 1 FROM mw_lot_wallets WHERE wallet_id = $1", wallet_id) is None:
                    return []  # never had a lot: nothing to keep
                checkpoint, lots = await _reconciled(conn, wallet_id)
                await _save(conn, checkpoint, lots)
                return lots

        return await self._with(run)

    async def expire_lots(self, now: datetime, batch_max: int = rules.EXPIRE_BATCH_MAX) -> list[ExpiredLot]:
        assert 1 <= batch_max <= rules.EXPIRE_BATCH_MAX, batch_max

        async def due(conn: asyncpg.Connection) -> dict[str, list[str]]:
            found = await conn.fetch("SELECT id, wallet_id FROM mw_credit_lots WHERE closed_at IS NULL AND expires_at <= $1"
                                     " ORDER BY expires_at, id LIMIT $2", now, batch_max)
            by_wallet: dict[str, list[str]] = {}
            for row in found:
                by_wallet.setdefault(row["wallet_id"], []).append(row["id"])
            return by_wallet

        expired: list[ExpiredLot] = []
        for wallet_id, lot_ids in (await self._with(due)).items():  # one short transaction per wallet
            async def run(conn: asyncpg.Connection, w: str = wallet_id, ids: frozenset[str] = frozenset(lot_ids)) -> list[ExpiredLot]:
                async with conn.transaction():
                    return await _expire_wallet(conn, w, ids, now)

            expired += await self._with(run)
        return expired


async def open_lot(conn: asyncpg.Connection, wallet_id: str, lot_id: str, amount_nusd: int,
                   expires_at: datetime) -> TransferOutcome:
    """Open a lot of amount_nusd, in the caller's transaction, right AFTER the credit that brings it.

    The lot is carved out of the wallet's non-expiring money, which the credit
    has just raised by at least amount_nusd (LotConflict otherwise). Idempotent
    by lot id: the same lot answers EXISTS, a different one LotConflict. Locks
    the wallet's row (the crediting posting already holds it).
    """
    rules.validate_lot(lot_id, amount_nusd)
    if await _same_lot(conn, wallet_id, lot_id, amount_nusd, expires_at) is TransferOutcome.EXISTS:
        return TransferOutcome.EXISTS
    await _lock_accounts(conn, [wallet_id])
    checkpoint, lots = await _reconciled(conn, wallet_id)
    if rules.non_expiring_nusd(checkpoint.balance_nusd, lots) < amount_nusd:
        raise LotConflict(f"wallet {wallet_id!r} has less non-expiring money than lot {lot_id!r}: open it after its credit")
    await _save(conn, checkpoint, lots)
    await conn.execute("INSERT INTO mw_credit_lots (id, wallet_id, amount_nusd, remaining_nusd, expires_at)"
                       " VALUES ($1, $2, $3, $3, $4)", lot_id, wallet_id, amount_nusd, _ms(expires_at))
    return TransferOutcome.CREATED


def _check_lot_with_credit(credit: TransferOutcome, lot: TransferOutcome | None, posting: Posting, lot_id: str) -> None:
    if credit is TransferOutcome.EXISTS and lot is not TransferOutcome.EXISTS:
        raise LotConflict(f"posting {posting.posting_id!r} was credited before, without lot {lot_id!r}")


async def _same_lot(conn: asyncpg.Connection, wallet_id: str, lot_id: str, amount_nusd: int,
                    expires_at: datetime) -> TransferOutcome | None:
    """EXISTS if this very lot is open already, None if no lot has the id, LotConflict if another one has."""
    row = await conn.fetchrow("SELECT wallet_id, amount_nusd, expires_at FROM mw_credit_lots WHERE id = $1", lot_id)
    if row is None:
        return None
    if (row["wallet_id"], row["amount_nusd"], row["expires_at"]) != (wallet_id, amount_nusd, _ms(expires_at)):
        raise LotConflict(f"lot {lot_id!r} exists with different content")
    return TransferOutcome.EXISTS


def _ms(value: datetime) -> datetime:
    return parse_utc(utc_text(value))  # milliseconds, as SQLite keeps it


async def _expire_wallet(conn: asyncpg.Connection, wallet_id: str, lot_ids: frozenset[str], now: datetime) -> list[ExpiredLot]:
    await _lock_accounts(conn, [wallet_id, FUNDING_ACCOUNT])  # the expiry posting's accounts, in id order
    checkpoint, lots = await _reconciled(conn, wallet_id)
    due_at = utc_text(now)
    expired = []
    for lot in lots:
        if lot.lot_id not in lot_ids or lot.expires_at > due_at:
            continue  # closed by a concurrent sweep (then not among the open lots), or not this call's
        if lot.remaining_nusd > 0:
            posting_id = rules.expiry_posting_id(lot.lot_id)
            posting = Posting(posting_id, TransferKind.EXPIRY, (Leg(wallet_id, FUNDING_ACCOUNT, lot.remaining_nusd),),
                              memo=f"credit lot {lot.lot_id} expired")
            outcome = await postings.write_posting(conn, posting_id, posting.transfers())
            assert outcome is TransferOutcome.CREATED, posting  # a lot closes with its posting
            expired.append(ExpiredLot(lot.lot_id, wallet_id, lot.remaining_nusd, lot.expires_at, posting_id))
        await conn.execute("UPDATE mw_credit_lots SET remaining_nusd = 0, expired_nusd = $2, closed_at = now() WHERE id = $1",
                           lot.lot_id, lot.remaining_nusd)
    await _save(conn, rules.after_expiries(checkpoint, expired), [lot for lot in lots if lot.lot_id not in lot_ids])
    return expired


async def _lock_accounts(conn: asyncpg.Connection, accounts: list[str]) -> None:
    await conn.execute("SELECT 1 FROM mw_accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE", accounts)


async def _reconciled(conn: asyncpg.Connection, wallet_id: str) -> tuple[Checkpoint, list[Lot]]:
    """The wallet's checkpoint and open lots as of now (a fresh checkpoint if it never had a lot)."""
    account = await conn.fetchrow(
        "SELECT a.balance_nusd, a.version, date_trunc('milliseconds', now() - make_interval(secs => $2)) AS new_start"
        " FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind WHERE a.id = $1 AND k.is_wallet",
        wallet_id, rules.TAIL_MARGIN_S)
    if account is None:
        raise NotAWallet(f"no wallet {wallet_id!r}")
    stored = await conn.fetchrow("SELECT * FROM mw_lot_wallets WHERE wallet_id = $1", wallet_id)
    new_start = account["new_start"]
    old_start = new_start if stored is None else stored["tail_start"]
    tail = await conn.fetchrow(_TAIL, wallet_id, old_start, new_start)
    now = TailNow(account["balance_nusd"], account["version"], tail[0], tail[1], utc_text(new_start), tail[2], tail[3])
    if stored is None:  # no lot ever: nothing to consume, only the sums to start from
        return Checkpoint(wallet_id, now.balance_nusd, now.version, now.new_start, now.new_count, now.new_debits_nusd,
                          await _cum_debits(conn, wallet_id)), []
    checkpoint = Checkpoint(wallet_id, stored["balance_nusd"], stored["version"], utc_text(stored["tail_start"]),
                            stored["tail_count"], stored["tail_debits_nusd"], stored["cum_debits_nusd"])
    lots = [_lot(row) for row in await conn.fetch(
        "SELECT * FROM mw_credit_lots WHERE wallet_id = $1 AND closed_at IS NULL ORDER BY expires_at, id", wallet_id)]
    cum = None if rules.tail_covers_window(checkpoint, now) else await _cum_debits(conn, wallet_id)
    return rules.reconcile(checkpoint, lots, now, cum)


async def _cum_debits(conn: asyncpg.Connection, wallet_id: str) -> int:
    found: int = await conn.fetchval(
        f"SELECT COALESCE(SUM(amount_nusd), 0)::bigint FROM mw_transfers WHERE debit_account = $1 AND {_SPENT}", wallet_id)
    return found


async def _save(conn: asyncpg.Connection, checkpoint: Checkpoint, lots: list[Lot]) -> None:
    c = checkpoint
    await conn.execute(_CHECKPOINT_WRITE, c.wallet_id, c.balance_nusd, c.version, parse_utc(c.tail_start), c.tail_count,
                       c.tail_debits_nusd, c.cum_debits_nusd)
    await conn.execute(
        "UPDATE mw_credit_lots l SET remaining_nusd = d.remaining FROM unnest($1::text[], $2::bigint[]) AS d (id, remaining)"
        " WHERE l.id = d.id AND l.remaining_nusd <> d.remaining",
        [lot.lot_id for lot in lots], [lot.remaining_nusd for lot in lots])


def _lot(row: asyncpg.Record) -> Lot:
    closed = row["closed_at"]
    return Lot(row["id"], row["wallet_id"], row["amount_nusd"], row["remaining_nusd"], utc_text(row["expires_at"]),
               utc_text(row["opened_at"]), row["expired_nusd"], None if closed is None else utc_text(closed))


def _net_credit(posting: Posting, wallet_id: str) -> int:
    return sum(leg.amount_nusd if leg.credit_account == wallet_id else -leg.amount_nusd
               for leg in posting.legs if wallet_id in (leg.debit_account, leg.credit_account))
