"""An inference key's limits as given when it is made: when it expires, which models it may call.

Shared by the admin API and the wallet API. A model the gateway does not
serve, or an expiry already past, is a 400 naming the parameter: a key that
could never be used is refused when it is made, not when it is first called.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

from gateway.errors import invalid_request
from gateway.http.admin_models import KeyLimitsInput
from gateway.http.bodies import Refused
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


def limits_json(expires_at: str | None, models: tuple[str, ...] | None) -> dict[str, object]:
    return {"expires_at": expires_at, "models": None if models is None else list(models)}
