"""Bring your own key: which provider key a call is forwarded with, and what the wallet pays for it.

A call is BYOK when it carries its own provider key (the X-Provider-Api-Key
header), or when its wallet stored one for the route's provider (its bot's
own key wins over the wallet's: gateway/money/provider_keys.py). It is then
forwarded with that key instead of the operator's, and the wallet pays the
BYOK fee only: byok.fee_bps basis points of the provider cost, rounded up to
the nUSD like every metered cost (the operator never earns less than the
rate), and 0 when fee_bps is 0. The fee goes to sys:fees, its own leg of the
settlement's posting; with no fee the call holds nothing and needs no balance.
Spend caps count the fee, the hold being the fee's worst case.
"""

from __future__ import annotations

from dataclasses import dataclass

from config.byok import ByokSettings
from gateway.errors import ApiError, invalid_request, service_unavailable
from gateway.metering.metering import Estimate
from gateway.money.calls import Byok, Route, byok_fee_nusd
from gateway.money.provider_keys import StoredKeys, choose
from gateway.money.secrets_box import Unreadable
from ledger.api_keys import ApiKeyRecord
from ledger.errors import LedgerError

PROVIDER_KEY_HEADER = "X-Provider-Api-Key"
PROVIDER_KEY_CHARS_MIN = 8


def fee_estimate(estimate: Estimate, fee_bps: int) -> Estimate:
    """The fee's worst case, from the call's: the fee only grows with the cost, so bounds stay bounds."""
    return Estimate(byok_fee_nusd(estimate.most_nusd, fee_bps), lambda: byok_fee_nusd(estimate.least(), fee_bps),
                    lambda: byok_fee_nusd(estimate.tighten(), fee_bps))


def key_problem(secret: str, chars_max: int) -> str | None:
    """Why a provider key cannot be one (never quoting it), or None."""
    if not PROVIDER_KEY_CHARS_MIN <= len(secret) <= chars_max:
        return f"a provider key is {PROVIDER_KEY_CHARS_MIN} to {chars_max} characters"
    if not secret.isascii() or not secret.isprintable() or any(c.isspace() for c in secret):
        return "a provider key is printable ASCII without spaces"
    return None


def byok_for(route: Route, secret: str, source: str, key_id: str | None, fee_bps: int) -> Byok:
    auth = {"Authorization": f"Bearer {secret}"}
    return Byok(source, key_id, fee_bps, {**route.headers_json, **auth}, {**route.headers_stream, **auth})


def unreadable(provider: str, why: Unreadable) -> ApiError:
    # Never the full price instead: the wallet stored a key to pay the provider itself.
    return ApiError(503, f"This wallet's stored key for the provider '{provider}' cannot be read by the gateway"
                    f" ({why.reason}). Nothing was charged; an owner can store the key again.",
                    "server_error", "provider_key_unreadable", headers={"x-should-retry": "false"})


@dataclass
class ByokKeys:
    """Which provider key a call goes with: the header's, a stored one, or the operator's (None)."""

    settings: ByokSettings
    stored: StoredKeys

    def may_apply(self, header: str | None, wallet_id: str) -> bool:
        """False (the plain path) unless a header came or the wallet may have stored keys: a dict lookup."""
        return header is not None or not self.stored.known_none(wallet_id)

    async def for_call(self, header: str | None, key: ApiKeyRecord, route: Route) -> Byok | None | ApiError:
        fee_bps = self.settings.fee_bps
        if header is not None:
            if not self.settings.header_enabled:
                return invalid_request(f"This gateway does not take provider keys in {PROVIDER_KEY_HEADER}.",
                                       PROVIDER_KEY_HEADER, "byok_header_disabled")
            problem = key_problem(header, self.settings.key_chars_max)
            if problem is not None:
                return invalid_request(f"Invalid {PROVIDER_KEY_HEADER}: {problem}.", PROVIDER_KEY_HEADER,
                                       "invalid_provider_key")
            return byok_for(route, header, "header", None, fee_bps)
        try:
            keys = await self.stored.of(key.wallet_id)
        except LedgerError:
            return service_unavailable("The ledger is unavailable; nothing was charged. Retry shortly.",
                                       "ledger_unavailable")
        found = choose(keys, key.bot_id, route.provider_name)
        if found is None:
            return None
        if isinstance(found.secret, Unreadable):
            return unreadable(route.provider_name, found.secret)
        return byok_for(route, found.secret, "stored", found.key_id, fee_bps)
