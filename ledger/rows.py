"""Rows as both database drivers return them (mappings) turned into ledger values."""

from __future__ import annotations

import json
import operator
from collections.abc import Mapping
from typing import Any

from ledger.api_keys import ApiKeyRecord, BotRule, SpendLimits
from ledger.book import Payee, SettledUsage, Transfer, TransferKind, TransferRecord, UsageRecord
from ledger.key_rules import KeyRules, rules_from_row
from ledger.times import parse_utc, utc_text

# A key with its member's limit and its live bot, as key_by_hash() reads it (the same SQL on both dialects).
KEY_SELECT = (
    "SELECT k.*, m.monthly_limit_nusd AS member_limit_nusd, b.id AS b_id, b.daily_cap_nusd AS b_daily_cap_nusd,"
    " b.monthly_cap_nusd AS b_monthly_cap_nusd, b.conversation_cap_nusd AS b_conversation_cap_nusd,"
    " b.friendly_message AS b_friendly_message FROM mw_keys k LEFT JOIN mw_members m ON m.id = k.member_id"
    " LEFT JOIN mw_bots b ON b.id = k.bot_id AND b.deleted_at IS NULL"
)

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
    values = {name: row[name] for name in USAGE_COLUMNS}
    values["byok"] = bool(values["byok"])  # SQLite keeps a boolean as 0 or 1
    record = UsageRecord(**values, payees=payees)
    return SettledUsage(record, row["charged_nusd"], row["shortfall_nusd"], str(row["created_at"]))


def key_limit_values(key: ApiKeyRecord) -> tuple[Any, ...]:
    """(bot_id, total, daily, monthly limit, rpm, tpm, parallel, ip allow-list) as mw_keys stores them."""
    limits = key.limits or SpendLimits()
    return (key.bot_id, limits.total_nusd, limits.day_nusd, limits.month_nusd, *rule_values(key.rules))


def rule_values(rules: KeyRules | None) -> tuple[int | None, int | None, int | None, str | None]:
    rules = rules or KeyRules()
    return rules.rpm, rules.tpm, rules.parallel_max, rules.ip_allow_json()


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
        limits=key_limits(row),
        bot_rule=bot_rule(row),
        rules=rules_from_row(row.get("rpm_max"), row.get("tpm_max"), row.get("parallel_max"), row.get("ip_allow")),
    )


def key_limits(row: Mapping[str, Any]) -> SpendLimits | None:
    limits = SpendLimits(total_nusd=row.get("total_limit_nusd"), day_nusd=row.get("daily_limit_nusd"),
                         month_nusd=row.get("monthly_limit_nusd"))
    return limits if limits.any else None


def bot_rule(row: Mapping[str, Any]) -> BotRule | None:
    """The bot joined as b_* columns by key_by_hash (None when the key has no live bot, or it was not joined)."""
    if row.get("b_id") is None:
        return None
    caps = SpendLimits(day_nusd=row["b_daily_cap_nusd"], month_nusd=row["b_monthly_cap_nusd"],
                       conversation_nusd=row["b_conversation_cap_nusd"])
    return BotRule(row["b_id"], caps, row["b_friendly_message"])
