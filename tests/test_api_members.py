"""Members through the wallet API: one-time invitation links, roles, limits, removal, activity; both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ledger.money import parse_usd
from ledger.owners import Role
from tests.test_api_permissions import call, make_org, owners


async def test_an_invitation_link_is_accepted_once(gw):
    org = await make_org(gw)
    status, body = await call(gw, "POST", "/api/members", org.secrets["owner"], {"name": "Nina", "role": "developer"})
    assert status == 201, body
    assert body["member"]["status"] == "invited" and body["expires_at"].endswith("Z")
    url = body["invite_url"]
    assert url.startswith(f"{gw.base_url}/api/invites/"), url
    path = url[len(gw.base_url):]
    status, shown = await call(gw, "GET", path)
    assert status == 200 and shown["org"] == "Acme" and shown["role"] == "developer", shown
    status, accepted = await call(gw, "POST", f"{path}/accept", None, {"name": "Nina's laptop"})
    assert status == 201, accepted
    secret = accepted["management_key"]["key"]
    assert secret.startswith("mwm-") and accepted["member"]["status"] == "active"
    assert accepted["management_key"]["name"] == "Nina's laptop", accepted
    status, me = await call(gw, "GET", "/api/members/me", secret)
    assert status == 200 and me["name"] == "Nina" and me["role"] == "developer", me
    for method in ("GET", "POST"):
        status, again = await call(gw, method, path if method == "GET" else f"{path}/accept", None, {})
        assert status == 404 and again["error"]["code"] == "invite_invalid", again
    status, bogus = await call(gw, "GET", "/api/invites/not-a-token")
    assert status == 404 and bogus["error"]["code"] == "invite_invalid", bogus


async def test_an_expired_invitation_is_refused(gw):
    org = await make_org(gw)
    invitation = await owners(gw).invite(org.wallet_id, "Late", Role.VIEWER, datetime.now(UTC) - timedelta(days=8))
    status, body = await call(gw, "POST", f"/api/invites/{invitation.token}/accept", None, {})
    assert status == 404 and body["error"]["code"] == "invite_invalid", body


async def test_invite_url_uses_the_public_base_url(gateway_factory):
    gw = await gateway_factory(wallet={"public_base_url": "https://gw.example.com/"})
    org = await make_org(gw)
    status, body = await call(gw, "POST", "/api/members", org.secrets["owner"], {"name": "N", "role": "viewer"})
    assert body["invite_url"].startswith("https://gw.example.com/api/invites/"), body


async def test_role_change_takes_effect_and_the_last_owner_stays(gw):
    org = await make_org(gw)
    status, body = await call(gw, "PATCH", f"/api/members/{org.members['viewer']}", org.secrets["owner"],
                              {"role": "owner"})
    assert status == 200 and body["role"] == "owner", body
    status, body = await call(gw, "PATCH", "/api/wallet", org.secrets["viewer"], {"low_balance_threshold": "3"})
    assert status == 200, body  # the new owner's key works as an owner's at once
    status, body = await call(gw, "PATCH", f"/api/members/{org.members['viewer']}", org.secrets["owner"],
                              {"role": "viewer"})
    assert status == 200
    for method, body_ in (("PATCH", {"role": "developer"}), ("DELETE", None)):
        status, body = await call(gw, method, f"/api/members/{org.members['owner']}", org.secrets["owner"], body_)
        assert status == 409 and body["error"]["code"] == "last_owner", body
    status, body = await call(gw, "PATCH", f"/api/members/{org.members['viewer']}", org.secrets["owner"],
                              {"role": "admin"})
    assert status == 400 and body["error"]["param"] == "role", body


async def test_monthly_limit_is_set_and_cleared(gw):
    org = await make_org(gw)
    path = f"/api/members/{org.members['developer']}"
    status, body = await call(gw, "PATCH", path, org.secrets["owner"], {"monthly_limit": "25.00"})
    assert status == 200 and body["monthly_limit"] == {"usd": "25", "nusd": parse_usd("25")}, body
    status, body = await call(gw, "PATCH", path, org.secrets["owner"], {"monthly_limit": None})
    assert status == 200 and body["monthly_limit"] is None, body
    status, body = await call(gw, "PATCH", path, org.secrets["owner"], {"monthly_limit": 25})
    assert status == 400 and body["error"]["param"] == "monthly_limit", body


async def test_removal_revokes_the_members_keys(gw):
    org = await make_org(gw)
    status, body = await call(gw, "DELETE", f"/api/members/{org.members['developer']}", org.secrets["owner"])
    assert status == 200 and body["status"] == "removed", body
    status, body = await call(gw, "GET", "/api/wallet", org.secrets["developer"])
    assert status == 401, body
    status, body = await call(gw, "POST", "/v1/chat/completions", org.key_secrets["developer"],
                              {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401 and body["error"]["code"] == "invalid_api_key", body
    status, keys = await call(gw, "GET", "/api/keys", org.secrets["owner"])
    dev_key = next(k for k in keys["data"] if k["id"] == org.keys["developer"])
    assert dev_key["revoked_at"] is not None


async def test_per_member_activity_and_key_spend(gw):
    org = await make_org(gw)
    client = gw.client(org.key_secrets["developer"])
    for _ in range(2):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    await gw.settled_everything()
    status, body = await call(gw, "GET", "/api/members", org.secrets["owner"])
    activity = {m["id"]: m["activity"]["month"] for m in body["data"]}
    assert activity[org.members["developer"]]["requests"] == 2 and activity[org.members["developer"]]["cost"]["nusd"] > 0
    assert activity[org.members["owner"]]["requests"] == 0
    status, body = await call(gw, "GET", "/api/members", org.secrets["developer"])
    assert [m["id"] for m in body["data"]] == [org.members["developer"]], body
    status, body = await call(gw, "GET", "/api/keys", org.secrets["developer"])
    assert [k["id"] for k in body["data"]] == [org.keys["developer"]], body
    spend = body["data"][0]["spend"]
    assert spend["today"]["requests"] == 2 and spend["month"]["requests"] == 2, spend


async def test_keys_are_created_for_the_caller_and_shown_once(gw):
    org = await make_org(gw)
    status, created = await call(gw, "POST", "/api/keys", org.secrets["developer"], {"name": "ci", "bot": "ci-bot"})
    assert status == 201 and created["key"].startswith("mw-") and created["member_id"] == org.members["developer"]
    status, listed = await call(gw, "GET", "/api/keys", org.secrets["owner"])
    assert all("key" not in k for k in listed["data"]) and created["id"] in {k["id"] for k in listed["data"]}
    status, mks = await call(gw, "GET", "/api/management-keys", org.secrets["viewer"])
    assert {k["member_id"] for k in mks["data"]} == {org.members["viewer"]} and all("key" not in k for k in mks["data"])
