"""Rows of the owners' tables (both drivers' mappings) as ledger/owners.py values."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import orjson

from ledger.caps import CapBalance, remaining
from ledger.owners import Deposit, DepositStatus, ManagementKeyRecord, Member, MemberStatus, Org, Role
from ledger.times import utc_text_or_none


def org(row: Mapping[str, Any]) -> Org:
    return Org(row["wallet_id"], row["name"], row["low_balance_nusd"], _time(row["created_at"]))


def member(row: Mapping[str, Any], prefix: str = "") -> Member:
    return Member(
        member_id=row[prefix + "id"], wallet_id=row[prefix + "wallet_id"], name=row[prefix + "name"],
        role=Role(row[prefix + "role"]), status=MemberStatus(row[prefix + "status"]),
        monthly_limit_nusd=row[prefix + "monthly_limit_nusd"], created_at=_time(row[prefix + "created_at"]),
        joined_at=utc_text_or_none(row[prefix + "joined_at"]), removed_at=utc_text_or_none(row[prefix + "removed_at"]),
    )


def management_key(row: Mapping[str, Any]) -> ManagementKeyRecord:
    return ManagementKeyRecord(row["id"], row["secret_hash"], row["prefix"], row["member_id"], row["name"],
                               utc_text_or_none(row["created_at"]), utc_text_or_none(row["revoked_at"]))


def deposit(row: Mapping[str, Any]) -> Deposit:
    return Deposit(
        deposit_id=row["id"], wallet_id=row["wallet_id"], method=row["method"],
        amount_credited_nusd=row["amount_credited_nusd"], paid_amount=row["paid_amount"],
        paid_currency=row["paid_currency"], status=DepositStatus(row["status"]), created_at=_time(row["created_at"]),
        completed_at=utc_text_or_none(row["completed_at"]), external_ref=row["external_ref"],
        discount_nusd=row["discount_nusd"], payment_ref=row["payment_ref"], customer_ref=row["customer_ref"],
        tier=row["tier"], purpose=row["purpose"], paid_cents=row["paid_cents"],
        credit_expires_at=utc_text_or_none(row["credit_expires_at"]),
    )


def cap(row: Mapping[str, Any]) -> CapBalance:
    return CapBalance(row["id"], remaining(row["limit_nusd"], row["spent_nusd"]), row["version"])


def stored_time(value: Any) -> str:
    """A stored time (text on SQLite, datetime on Postgres) as the ledger's text."""
    return _time(value)


def _time(value: Any) -> str:
    text = utc_text_or_none(value)
    assert text is not None
    return text


def encode_cursor(*parts: object) -> str:
    """An opaque page cursor: the sort key of the last item returned."""
    return base64.urlsafe_b64encode(orjson.dumps(list(parts))).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    """The parts encode_cursor() wrote; ValueError for anything it did not write."""
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise ValueError("invalid cursor") from exc
    if not isinstance(parts, list) or len(parts) != arity or not all(isinstance(p, (str, int)) for p in parts):
        raise ValueError("invalid cursor")
    return parts
