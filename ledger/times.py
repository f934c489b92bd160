"""Times as the ledger hands them out: ISO 8601 UTC text with milliseconds and a Z.

SQLite stores exactly this text (strftime '%Y-%m-%dT%H:%M:%fZ'), so it sorts and
compares as text; Postgres stores timestamptz, turned into the same text on the
way out. One format for both backends, so the API never sees which one answered.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(value: datetime) -> str:
    assert value.tzinfo is not None, "times are timezone-aware"
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def utc_text_or_none(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return utc_text(value)


def parse_utc(text: str) -> datetime:
    """ISO 8601 text (with Z or an offset) -> an aware datetime; ValueError otherwise."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"a time needs a timezone (e.g. Z): {text!r}")
    return value.astimezone(UTC)
