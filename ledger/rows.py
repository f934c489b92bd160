"""Rows as both database drivers return them (mappings) turned into ledger values."""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from typing import Any

from ledger.book import ApiKeyRecord, Payee, SettledUsage, Transfer, TransferKind, TransferRecord, UsageRecord
from ledger.times import parse_utc, utc_text

# mw_usage's plain columns; payees is JSON (TEXT on SQLite, jsonb on Postgres).
# caps are the hold's, not the row's: the cap rows (mw_spend_caps) keep the sums.
USAGE_COLUMNS = tuple(name for name in UsageRecord.__dataclass_fields__ if name not in ("payees", "caps"))
# One C call for a record's column values, in USAGE_COLUMNS order (the settle thread's hot path).
usage_values = operator.attrgetter(*USAGE_COLUMNS)


def transfer_record(row: Mapping[str, Any]) -> TransferRecord:
    transfer = Transfer(
        transfer_id=row["id"],
        debit_account=row["debit_account"],
        credit_account=row["credit_account"],
        amount_nusd=row["amount_nusd"],
        kind=TransferKind(row["kind"]),
        request_id=row["request_id"],
        memo=row["memo"],
    )
    return TransferRecord(transfer, str(row["created_at"]), row.get("posting_id"))


def settled_usage(row: Mapping[str, Any]) -> SettledUsage:
    payees = tuple(Payee(**p) for p in json.loads(row["payees"]))
    record = UsageRecord(**{name: row[name] for name in USAGE_COLUMNS}, payees=payees)
    return SettledUsage(record, row["charged_nusd"], row["shortfall_nusd"], str(row["created_at"]))


def allowed_models_json(key: ApiKeyRecord) -> str | None:
    return None if key.allowed_models is None else json.dumps(list(key.allowed_models))


def key_record(row: Mapping[str, Any]) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row["id"],
        secret_hash=row["secret_hash"],
        prefix=row["prefix"],
        wallet_id=row["wallet_id"],
        name=row["name"],
        bot=row["bot"],
        created_at=None if row["created_at"] is None else str(row["created_at"]),
        revoked_at=None if row["revoked_at"] is None else str(row["revoked_at"]),
        member_id=row.get("member_id"),
        member_limit_nusd=row.get("member_limit_nusd"),
        expires_at=None if row.get("expires_at") is None else utc_text(parse_utc(str(row["expires_at"]))),
        allowed_models=None if row.get("allowed_models") is None else tuple(json.loads(row["allowed_models"])),
    )
