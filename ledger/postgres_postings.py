"""Postings and reversals on Postgres, each inside the caller's transaction.

A posting's legs go in with one INSERT, so the statement trigger of migration
0002 updates each account once, locking the accounts in id order (the ledger's
one lock order). A reversal locks its accounts in that same order before it
reads the balance it splits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ledger.book import (
    RECEIVABLE_KIND,
    Reversal,
    ReversalResult,
    Transfer,
    TransferOutcome,
    TransferRecord,
)
from ledger.errors import InsufficientFunds, NotAWallet, UnknownAccount
from ledger.postings import (
    check_funding_credit,
    check_posting_replay,
    first_overdraft,
    receivable_account,
    reversal_replay,
    reversal_transfers,
)
from ledger.rows import transfer_record

_INSERT_LEGS = (
    "INSERT INTO mw_transfers (id, posting_id, debit_account, credit_account, amount_nusd, kind, request_id, memo)"
    " SELECT i, $1, d, c, a, k, r, m FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],"
    " $7::text[], $8::text[]) AS legs (i, d, c, a, k, r, m)"
)


async def stored_posting(conn: asyncpg.Connection, posting_id: str, ids: Sequence[str]) -> list[TransferRecord]:
    rows = await conn.fetch("SELECT * FROM mw_transfers WHERE posting_id = $1 OR id = ANY($2::text[])", posting_id, list(ids))
    return [transfer_record(text_times(r)) for r in rows]


async def write_posting(conn: asyncpg.Connection, posting_id: str, transfers: Sequence[Transfer]) -> TransferOutcome:
    """All legs or none (the caller's transaction); a concurrent twin surfaces as UniqueViolationError."""
    stored = await stored_posting(conn, posting_id, [t.transfer_id for t in transfers])
    if stored:
        return check_posting_replay(posting_id, transfers, stored)
    accounts = sorted({a for t in transfers for a in (t.debit_account, t.credit_account)})
    rows = await conn.fetch(  # locked in id order: the ledger's one lock order
        "SELECT id, kind, balance_nusd, allow_negative FROM mw_accounts WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
        accounts,
    )
    found = {r["id"]: r for r in rows}
    missing = [a for a in accounts if a not in found]
    if missing:
        raise UnknownAccount(f"no account {missing[0]!r}")
    overdraft = first_overdraft(transfers, {a: r["balance_nusd"] for a, r in found.items()},
                                {a for a, r in found.items() if r["allow_negative"]})
    if overdraft is not None:
        raise InsufficientFunds(f"{overdraft.debit_account!r} cannot pay {overdraft.amount_nusd} nUSD")
    try:
        await conn.execute(
            _INSERT_LEGS, posting_id, [t.transfer_id for t in transfers], [t.debit_account for t in transfers],
            [t.credit_account for t in transfers], [t.amount_nusd for t in transfers], [t.kind.value for t in transfers],
            [t.request_id for t in transfers], [t.memo for t in transfers],
        )
    except asyncpg.ForeignKeyViolationError as exc:
        raise UnknownAccount(f"posting {posting_id!r} names an unknown account or kind: {exc.detail}") from exc
    except asyncpg.CheckViolationError as exc:
        raise InsufficientFunds(f"posting {posting_id!r}: an account cannot pay its leg") from exc
    for transfer in transfers:
        # Inside the caller's transaction: a refusal here rolls the insert back.
        check_funding_credit(transfer, found[transfer.credit_account]["kind"])
    return TransferOutcome.CREATED


async def reverse(conn: asyncpg.Connection, reversal: Reversal) -> ReversalResult:
    stored = await stored_posting(conn, reversal.reversal_id, ())
    if stored:
        return reversal_replay(reversal, stored)
    receivable = receivable_account(reversal.account_id)
    await conn.execute(
        "INSERT INTO mw_accounts (id, kind, name, allow_negative) VALUES ($1, $2, $3, true) ON CONFLICT (id) DO NOTHING",
        receivable, RECEIVABLE_KIND, f"owed by {reversal.account_id}",
    )
    rows = await conn.fetch(
        "SELECT a.id, a.balance_nusd, k.is_wallet FROM mw_accounts a JOIN mw_account_kinds k ON k.kind = a.kind"
        " WHERE a.id = ANY($1::text[]) ORDER BY a.id FOR UPDATE OF a",
        [reversal.account_id, reversal.counter_account, receivable],
    )
    found = {r["id"]: r for r in rows}
    account = found.get(reversal.account_id)
    if account is None or not account["is_wallet"]:
        raise NotAWallet(f"no wallet {reversal.account_id!r} to reverse from")
    if reversal.counter_account not in found:
        raise UnknownAccount(f"no account {reversal.counter_account!r}")
    taken, owed, transfers = reversal_transfers(reversal, account["balance_nusd"])
    outcome = await write_posting(conn, reversal.reversal_id, transfers)
    assert outcome is TransferOutcome.CREATED, reversal
    return ReversalResult(taken, owed, TransferOutcome.CREATED)


def text_times(row: asyncpg.Record) -> dict[str, Any]:
    data = dict(row)
    for name in ("created_at", "revoked_at"):
        if data.get(name) is not None:
            data[name] = data[name].isoformat()
    return data
