"""An inference key's limits as given when it is made: when it expires, which models it may call, what it may spend.

Shared by the admin API and the wallet API. A model the gateway does not
serve, or an expiry already past, is a 400 naming the parameter: a key that
could never be used is refused when it is made, not when it is first called.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from gateway.errors import invalid_request
from gateway.http.admin_models import KeyLimitsInput, KeySpendPatch
from gateway.http.bodies import Refused
from ledger.api_keys import ApiKeyRecord, SpendLimits
from ledger.key_rules import KeyRules, parse_cidrs
from ledger.money import format_usd, parse_usd
from ledger.times import utc_text


def key_limits(given: KeyLimitsInput, served: Collection[str], now: datetime | None = None
               ) -> tuple[str | None, tuple[str, ...] | None]:
    """(expires_at as ledger text, allowed models) for ApiKeyRecord; Refused for a key that could never work."""
    now = now or datetime.now(UTC)
    if given.expires_at is not None and given.expires_at <= now:
        raise Refused(invalid_request("expires_at must be in the future.", "expires_at", "invalid_value"))
    models = None
    if given.models is not None:
        unknown = sorted(set(given.models) - set(served))
        if unknown:
            raise Refused(invalid_request(f"Unknown model {unknown[0]!r}: a key may be limited to the models this "
                                          f"gateway serves ({', '.join(sorted(served))}).", "models", "unknown_model"))
        models = tuple(dict.fromkeys(given.models))  # in the order given, once each
    return (None if given.expires_at is None else utc_text(given.expires_at.astimezone(UTC))), models


def key_rules(given: KeyLimitsInput | KeySpendPatch) -> KeyRules | None:
    """Its traffic rules; an address or range that does not parse is a 400 naming ip_allow."""
    ip_allow = None
    if given.ip_allow is not None:
        try:
            ip_allow = parse_cidrs(given.ip_allow)
        except ValueError as exc:
            raise Refused(invalid_request(f"{exc}.", "ip_allow", "invalid_value")) from exc
    rules = KeyRules(given.rpm, given.tpm, given.max_parallel, ip_allow)
    return rules if rules.any else None


def spend_limits(given: KeyLimitsInput | KeySpendPatch) -> SpendLimits | None:
    """The key's own spend limits in nUSD (None: none at all)."""
    limits = SpendLimits(total_nusd=_nusd(given.total_limit), day_nusd=_nusd(given.daily_limit),
                         month_nusd=_nusd(given.monthly_limit))
    return limits if limits.any else None


def _nusd(usd: str | None) -> int | None:
    return None if usd is None else parse_usd(usd)


def limits_json(key: ApiKeyRecord) -> dict[str, object]:
    limits = key.limits or SpendLimits()
    return {"expires_at": key.expires_at, "models": None if key.allowed_models is None else list(key.allowed_models),
            "bot_id": key.bot_id, "total_limit": _usd(limits.total_nusd), "daily_limit": _usd(limits.day_nusd),
            "monthly_limit": _usd(limits.month_nusd), **_rules_json(key.rules or KeyRules())}


def _rules_json(rules: KeyRules) -> dict[str, object]:
    return {"rpm": rules.rpm, "tpm": rules.tpm, "max_parallel": rules.parallel_max,
            "ip_allow": None if rules.ip_allow is None else list(rules.ip_allow)}


def _usd(nusd: int | None) -> str | None:
    return None if nusd is None else format_usd(nusd)
