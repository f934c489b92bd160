"""Members, invitations and management keys through the wallet API.

An owner invites (a one-time link, no email server), changes roles and
monthly limits, and removes members; LastOwner is a 409. Everyone reads itself
(/api/members/me) and manages its own management keys. The invitation pair
needs no key: the link's token is the credential, and it works once.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import not_found
from gateway.http import api_models as inputs
from gateway.http.api_base import Caller, api, guarded, money_or_none, owners_of
from gateway.http.bodies import Refused, json_body, valid
from gateway.http.notices import Subject
from gateway.http.state import STATE
from gateway.money.caps import apply_member_limit
from gateway.money.keys import hash_secret
from gateway.money.owner_keys import looks_like_invite_token
from gateway.money.roles import Permission
from ledger.history import Spend
from ledger.money import parse_usd
from ledger.owners import InviteInvalid, ManagementKeyRecord, Member
from ledger.times import utc_text


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/members", api(Permission.READ_SELF, list_members))
    app.router.add_get("/api/members/me", api(Permission.READ_SELF, me))
    app.router.add_post("/api/members", api(Permission.MANAGE_MEMBERS, invite))
    app.router.add_patch("/api/members/{id}", api(Permission.MANAGE_MEMBERS, patch_member))
    app.router.add_delete("/api/members/{id}", api(Permission.MANAGE_MEMBERS, remove_member))
    app.router.add_get("/api/management-keys", api(Permission.MANAGE_OWN_MANAGEMENT_KEYS, list_management_keys))
    app.router.add_post("/api/management-keys", api(Permission.MANAGE_OWN_MANAGEMENT_KEYS, create_management_key))
    app.router.add_delete("/api/management-keys/{id}",
                          api(Permission.MANAGE_OWN_MANAGEMENT_KEYS, revoke_management_key))
    app.router.add_get("/api/invites/{token}", guarded(show_invite))
    app.router.add_post("/api/invites/{token}/accept", guarded(accept_invite))


def member_json(member: Member, caller_settings: Any, activity: Spend | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": member.member_id, "name": member.name, "role": member.role.value, "status": member.status.value,
        "monthly_limit": money_or_none(member.monthly_limit_nusd, caller_settings),
        "created_at": member.created_at, "joined_at": member.joined_at, "removed_at": member.removed_at}
    if activity is not None:
        out["activity"] = {"month": {"requests": activity.requests,
                                     "cost": money_or_none(activity.cost_nusd, caller_settings)}}
    return out


def management_key_json(key: ManagementKeyRecord) -> dict[str, Any]:
    return {"id": key.key_id, "prefix": key.prefix, "name": key.name, "member_id": key.member_id,
            "created_at": key.created_at, "revoked_at": key.revoked_at}


async def _member_of_wallet(caller: Caller, member_id: str) -> Member:
    member = await caller.owners.store.member(member_id)
    if member is None or member.wallet_id != caller.wallet_id:
        raise Refused(not_found(f"no member {member_id!r}"))
    return member


async def list_members(request: web.Request, caller: Caller) -> web.Response:
    members = await caller.owners.store.list_members(caller.wallet_id)
    if not caller.can(Permission.READ_MEMBERS):
        members = [m for m in members if m.member_id == caller.member_id]
    activity = await caller.owners.member_activity(caller.wallet_id, caller.now)
    s = caller.owners.settings
    return web.json_response({"object": "list", "data": [
        member_json(m, s, activity.get(m.member_id, Spend(0, 0, 0))) for m in members]})


async def me(request: web.Request, caller: Caller) -> web.Response:
    activity = await caller.owners.member_activity(caller.wallet_id, caller.now)
    return web.json_response(member_json(caller.identity.member, caller.owners.settings,
                                         activity.get(caller.member_id, Spend(0, 0, 0))))


def _base_url(request: web.Request) -> str:
    configured = request.app[STATE].settings.wallet.public_base_url
    return configured or f"{request.scheme}://{request.host}"


async def invite(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.Invite, await json_body(request))
    invitation = await caller.owners.invite(caller.wallet_id, body.name, body.role, caller.now)
    return web.json_response({
        "member": member_json(invitation.member, caller.owners.settings),
        "invite_url": f"{_base_url(request)}/api/invites/{invitation.token}",
        "expires_at": utc_text(invitation.expires_at)}, status=201)


async def patch_member(request: web.Request, caller: Caller) -> web.Response:
    member_id = valid(inputs.IdPath, dict(request.match_info)).id
    body = valid(inputs.MemberPatch, await json_body(request))
    member = await _member_of_wallet(caller, member_id)
    store = caller.owners.store
    if body.role is not None and body.role is not member.role:
        member = await store.set_member_role(member_id, body.role)
    if "monthly_limit" in body.model_fields_set:
        limit = None if body.monthly_limit is None else parse_usd(body.monthly_limit)
        member = await apply_member_limit(store, caller.owners.holds, member_id, limit, caller.now)
    # The role and the limit take effect at once, here and in every other process.
    await request.app[STATE].notices.announce(Subject.MEMBER, member_id)
    return web.json_response(member_json(member, caller.owners.settings))


async def remove_member(request: web.Request, caller: Caller) -> web.Response:
    member_id = valid(inputs.IdPath, dict(request.match_info)).id
    await _member_of_wallet(caller, member_id)
    store = caller.owners.store
    keys = [k.key_id for k in await store.list_keys(caller.wallet_id) if k.member_id == member_id]
    member = await store.remove_member(member_id)
    notices = request.app[STATE].notices
    await notices.announce(Subject.MEMBER, member_id)
    for key_id in keys:
        await notices.announce(Subject.KEY, key_id)
    return web.json_response(member_json(member, caller.owners.settings))


async def list_management_keys(request: web.Request, caller: Caller) -> web.Response:
    keys = await caller.owners.store.list_management_keys(caller.member_id)
    return web.json_response({"object": "list", "data": [management_key_json(k) for k in keys]})


async def create_management_key(request: web.Request, caller: Caller) -> web.Response:
    body = valid(inputs.CreateManagementKey, await json_body(request))
    record, new = await caller.owners.create_management_key(caller.member_id, body.name)
    return web.json_response({**management_key_json(record), "key": new.secret}, status=201)


async def revoke_management_key(request: web.Request, caller: Caller) -> web.Response:
    key_id = valid(inputs.IdPath, dict(request.match_info)).id
    store = caller.owners.store
    own = {k.key_id for k in await store.list_management_keys(caller.member_id) if k.active}
    if key_id not in own or not await store.revoke_management_key(key_id):
        raise Refused(not_found(f"no active management key {key_id!r}"))
    await request.app[STATE].notices.announce(Subject.MANAGEMENT_KEY, key_id)
    return web.json_response({"id": key_id, "revoked": True})


def _token(request: web.Request) -> str:
    token = request.match_info["token"]
    if not looks_like_invite_token(token):
        raise InviteInvalid("malformed token")
    return token


async def show_invite(request: web.Request) -> web.Response:
    owners = owners_of(request)
    found = await owners.store.invite(hash_secret(_token(request)))
    if found is None:
        raise InviteInvalid("unknown, used or expired")
    member, expires_at = found
    org = await owners.store.org(member.wallet_id)
    return web.json_response({"org": org.name if org else member.wallet_id, "role": member.role.value,
                              "name": member.name, "expires_at": expires_at})


async def accept_invite(request: web.Request) -> web.Response:
    token = _token(request)
    body = valid(inputs.Accept, await json_body(request))
    owners = owners_of(request)
    member, key, new = await owners.accept(token, body.name)
    s = owners.settings
    return web.json_response({"member": member_json(member, s),
                              "management_key": {**management_key_json(key), "key": new.secret}}, status=201)
