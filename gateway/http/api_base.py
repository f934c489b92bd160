"""The wallet API's common ground (/api/*): one auth wrapper, its refusals, inputs and money as JSON.

Every route but the invitation pair needs `Authorization: Bearer mwm-...`, a
management key; an inference key (`mw-...`) is refused with a message saying
where it belongs. The wrapper resolves the key to a member (cached briefly,
wallet.management_key_cache_ttl_s), checks the route's permission against
gateway/money/roles.py, and turns every refusal into an OpenAI-shaped error.
The routes are in api.py (the wallet), api_keys.py and api_members.py.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from config.settings import WalletSettings
from gateway.errors import ApiError, invalid_request, not_found
from gateway.http.auth import bearer_secret
from gateway.http.bodies import Refused
from gateway.http.notices import Notice, Subject
from gateway.http.responses import error_response
from gateway.http.state import STATE
from gateway.money.keys import hash_secret, looks_like_key
from gateway.money.owner_keys import looks_like_management_key
from gateway.money.roles import Permission, allows
from gateway.money.wallet_owners import WalletOwners
from ledger.errors import BotExists, BotInUse, LedgerError
from ledger.money import MoneyFormatError, format_usd
from ledger.owners import InviteInvalid, LastOwner, ManagementIdentity, MemberStatus, Org

ENTRIES_CACHE_MAX = 10_000


def invalid_management_key(message: str = "Incorrect management key provided.") -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_management_key")


def permission_denied(permission: Permission) -> ApiError:
    return ApiError(403, f"Your role does not allow this ({permission.value}).", "invalid_request_error",
                    "permission_denied")


class ManagementKeys:
    """Management key hash -> identity, cached for a short time (unknown keys too)."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl_s = ttl_s
        self._entries: OrderedDict[str, tuple[float, ManagementIdentity | None]] = OrderedDict()

    async def lookup(self, owners: WalletOwners, secret_hash: str) -> ManagementIdentity | None:
        now = time.monotonic()
        cached = self._entries.get(secret_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        identity = await owners.store.management_key_by_hash(secret_hash)
        self._entries[secret_hash] = (now + self._ttl_s, identity)
        while len(self._entries) > ENTRIES_CACHE_MAX:
            self._entries.popitem(last=False)
        return identity

    def forget_member(self, member_id: str) -> None:
        for secret_hash, (_, identity) in list(self._entries.items()):
            if identity is not None and identity.member.member_id == member_id:
                del self._entries[secret_hash]

    def forget_key(self, key_id: str) -> None:
        for secret_hash, (_, identity) in list(self._entries.items()):
            if identity is not None and identity.key.key_id == key_id:
                del self._entries[secret_hash]

    def hear(self, notice: Notice) -> None:
        """A member or a management key changed, here or in another process."""
        if notice.subject is Subject.ALL:
            self._entries.clear()
        elif notice.subject is Subject.MEMBER:
            self.forget_member(notice.subject_id)
        elif notice.subject is Subject.MANAGEMENT_KEY:
            self.forget_key(notice.subject_id)


MANAGEMENT_KEYS = web.AppKey("meterway_management_keys", ManagementKeys)


@dataclass(frozen=True)
class Caller:
    identity: ManagementIdentity
    owners: WalletOwners
    keys: ManagementKeys
    now: datetime

    @property
    def wallet_id(self) -> str:
        return self.identity.member.wallet_id

    @property
    def member_id(self) -> str:
        return self.identity.member.member_id

    def can(self, permission: Permission) -> bool:
        return allows(self.identity.member.role, permission)


Handler = Callable[[web.Request, Caller], Awaitable[web.Response]]
Route = Callable[[web.Request], Awaitable[web.Response]]


def owners_of(request: web.Request) -> WalletOwners:
    state = request.app[STATE]
    return WalletOwners(state.book, state.holds, state.settings.wallet)


def guarded(handler: Route) -> Route:
    """Refusals and ledger answers as errors, for every /api route (the unauthenticated ones too)."""
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except Refused as refused:
            return error_response(refused.error)
        except LastOwner as exc:
            return error_response(ApiError(409, str(exc) or "The organisation needs at least one active owner.",
                                           "invalid_request_error", "last_owner"))
        except InviteInvalid:
            return error_response(ApiError(404, "This invitation link is unknown, already used or expired.",
                                           "invalid_request_error", "invite_invalid"))
        except MoneyFormatError as exc:
            return error_response(invalid_request(str(exc)))
        except (BotExists, BotInUse) as exc:
            return error_response(ApiError(409, str(exc), "invalid_request_error", exc.code))

    return wrapped


def api(permission: Permission, handler: Handler, also: Permission | None = None) -> Route:
    """A route that needs a management key whose role grants permission (or, if given, also)."""
    async def authorised(request: web.Request) -> web.Response:
        owners = owners_of(request)
        keys = request.app[MANAGEMENT_KEYS]
        identity = await authenticate(keys, owners, request.headers.get("Authorization"))
        role = identity.member.role
        if not allows(role, permission) and not (also is not None and allows(role, also)):
            raise Refused(permission_denied(permission))
        return await handler(request, Caller(identity, owners, keys, datetime.now(UTC)))

    return guarded(authorised)


async def authenticate(keys: ManagementKeys, owners: WalletOwners, authorization: str | None) -> ManagementIdentity:
    secret = bearer_secret(authorization)
    if secret is None:
        raise Refused(invalid_management_key(
            "You didn't provide a management key. Send it as 'Authorization: Bearer mwm-...'."))
    if looks_like_key(secret):
        raise Refused(invalid_management_key(
            "This is an inference key (mw-...): it calls /v1. The wallet API (/api) needs a management key (mwm-...)."))
    if not looks_like_management_key(secret):
        raise Refused(invalid_management_key("Incorrect management key provided: it is not a Meterway management key."))
    try:
        identity = await keys.lookup(owners, hash_secret(secret))
    except LedgerError as exc:
        raise Refused(ApiError(503, "The ledger is unavailable. Retry shortly.", "server_error",
                               "ledger_unavailable")) from exc
    if identity is None:
        raise Refused(invalid_management_key())
    if not identity.key.active:
        raise Refused(invalid_management_key("This management key has been revoked."))
    if identity.member.status is not MemberStatus.ACTIVE:
        raise Refused(invalid_management_key("This management key's member was removed from the organisation."))
    return identity


def money(amount_nusd: int, settings: WalletSettings) -> dict[str, Any]:
    """{"usd": "12.5", "nusd": 12500000000, "display": {...} when a display unit is configured}."""
    out: dict[str, Any] = {"usd": format_usd(amount_nusd), "nusd": amount_nusd}
    unit = settings.display_unit
    if unit is not None:
        out["display"] = {"amount": format_usd(amount_nusd * unit.per_usd), "unit": unit.name}
    return out


def money_or_none(amount_nusd: int | None, settings: WalletSettings) -> dict[str, Any] | None:
    return None if amount_nusd is None else money(amount_nusd, settings)


async def org_of(caller: Caller) -> Org:
    org = await caller.owners.store.org(caller.wallet_id)
    if org is None:
        raise Refused(not_found("no organisation for this wallet"))
    return org
