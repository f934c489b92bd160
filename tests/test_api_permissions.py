"""The wallet API's permission matrix: every role against every endpoint, refusals included.

One table: each row is an endpoint and the status each role gets. Each row
runs against a fresh organisation (owner, developer, viewer, and a member to
act on), so a write in one row cannot change the next; both backends.
"""

from __future__ import annotations

import base64
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from gateway.money.wallet_owners import WalletOwners
from ledger.api_keys import SpendLimits
from ledger.bots import Bot
from ledger.money import parse_usd
from ledger.owners import Role
from ledger.provider_keys import ProviderKeyRecord

ROLES = ("owner", "developer", "viewer")


@dataclass
class Org:
    wallet_id: str
    secrets: dict[str, str]  # role -> management key
    members: dict[str, str]  # role (and "target") -> member id
    keys: dict[str, str]  # role -> an inference key id owned by that role's member
    key_secrets: dict[str, str]  # role -> that inference key's secret
    spare_mk: dict[str, str]  # role -> a second management key of its own
    bot: str = ""  # a bot of the wallet, with no keys
    provider_key: str = ""  # a stored provider key of the wallet (BYOK)


@pytest.fixture(autouse=True)
def master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A master key, so that storing a provider key can succeed for the role that may (gateway/money/secrets_box.py)."""
    monkeypatch.setenv("MW_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())


def owners(gw) -> WalletOwners:
    return WalletOwners(gw.state.book, gw.state.holds, gw.state.settings.wallet)


async def make_org(gw, usd: str = "20", provider_key: bool = False) -> Org:
    service = owners(gw)
    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    gw.wallets.append(wallet_id)
    _, owner, new = await service.create_org(wallet_id, "Acme", "Olive")
    if parse_usd(usd):
        await gw.ops.credit(wallet_id, parse_usd(usd), memo="test funding")
    org = Org(wallet_id, {"owner": new.secret}, {"owner": owner.member_id}, {}, {}, {})
    now = datetime.now(UTC)
    for who, role in (("developer", Role.DEVELOPER), ("viewer", Role.VIEWER), ("target", Role.VIEWER)):
        invitation = await service.invite(wallet_id, who.capitalize(), role, now)
        member, _, key = await service.accept(invitation.token)
        org.secrets[who], org.members[who] = key.secret, member.member_id
    for role in ROLES:
        key, _ = await gw.ops.create_key(wallet_id, f"{role}-key", member_id=org.members[role])
        org.keys[role], org.key_secrets[role] = key.key_id, key.secret
        record, _ = await service.create_management_key(org.members[role], "spare")
        org.spare_mk[role] = record.key_id
    bot = await gw.state.book.create_bot(Bot(f"bot_{uuid.uuid4().hex[:8]}", wallet_id, "support", SpendLimits()))
    org.bot = bot.bot_id
    if not provider_key:
        return org
    # The book keeps what it is given: a sealed-looking value is enough to list and revoke it (never to call with).
    stored = await gw.state.book.store_provider_key(
        ProviderKeyRecord(f"pk_{uuid.uuid4().hex[:12]}", wallet_id, None, "fake", "mwk1.00000000.x", "abcd"), 10)
    org.provider_key = stored.key_id
    return org


async def call(gw, method: str, path: str, secret: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{gw.base_url}{path}", json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)


# (method, path, body, {role: status}); {target}, {owner_key}, {own_key}, {own_mk}, {bot}, {provider_key} are filled
# per org and role.
MATRIX: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", "/api/wallet", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("PATCH", "/api/wallet", {"low_balance_threshold": "10.00"}, {"owner": 200, "developer": 403, "viewer": 403}),
    ("GET", "/api/wallet/transactions", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("GET", "/api/wallet/deposits", None, {"owner": 200, "developer": 403, "viewer": 200}),
    ("GET", "/api/keys", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/keys", {"name": "ci"}, {"owner": 201, "developer": 201, "viewer": 403}),
    ("DELETE", "/api/keys/{own_key}", None, {"owner": 200, "developer": 200, "viewer": 403}),
    ("DELETE", "/api/keys/{owner_key}", None, {"owner": 200, "developer": 404, "viewer": 403}),
    ("PATCH", "/api/keys/{own_key}", {"daily_limit": "1.00"}, {"owner": 200, "developer": 403, "viewer": 403}),
    ("GET", "/api/bots", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/bots", {"name": "reviewer"}, {"owner": 201, "developer": 403, "viewer": 403}),
    ("GET", "/api/bots/{bot}", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("PATCH", "/api/bots/{bot}", {"daily_cap": "1.00"}, {"owner": 200, "developer": 403, "viewer": 403}),
    ("DELETE", "/api/bots/{bot}", None, {"owner": 200, "developer": 403, "viewer": 403}),
    ("GET", "/api/provider-keys", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/provider-keys", {"provider": "fake", "api_key": "sk-byok-matrix-0123456789"},
     {"owner": 201, "developer": 403, "viewer": 403}),
    ("DELETE", "/api/provider-keys/{provider_key}", None, {"owner": 200, "developer": 403, "viewer": 403}),
    ("GET", "/api/webhooks", None, {"owner": 200, "developer": 403, "viewer": 200}),
    ("POST", "/api/webhooks", {"url": "https://example.com/h", "events": ["cap.reached"]},
     {"owner": 201, "developer": 403, "viewer": 403}),
    ("GET", "/api/alerts", None, {"owner": 200, "developer": 403, "viewer": 200}),
    ("POST", "/api/alerts", {"threshold": "5"}, {"owner": 201, "developer": 403, "viewer": 403}),
    ("GET", "/api/members", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("GET", "/api/members/me", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/members", {"name": "Nina", "role": "viewer"}, {"owner": 201, "developer": 403, "viewer": 403}),
    ("PATCH", "/api/members/{target}", {"role": "developer"}, {"owner": 200, "developer": 403, "viewer": 403}),
    ("PATCH", "/api/members/{target}", {"monthly_limit": "25.00"}, {"owner": 200, "developer": 403, "viewer": 403}),
    ("DELETE", "/api/members/{target}", None, {"owner": 200, "developer": 403, "viewer": 403}),
    ("GET", "/api/management-keys", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/management-keys", {"name": "laptop"}, {"owner": 201, "developer": 201, "viewer": 201}),
    ("DELETE", "/api/management-keys/{own_mk}", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("GET", "/api/topup/tiers", None, {"owner": 200, "developer": 200, "viewer": 200}),
    ("POST", "/api/topup/quote", {"amount": "75.00"}, {"owner": 200, "developer": 200, "viewer": 200}),
    ("GET", "/api/wallet/notifications", None, {"owner": 200, "developer": 200, "viewer": 200}),
    # Card top-ups need [stripe] enabled (tests/test_topups.py): here a 404 for the role that may ask.
    ("POST", "/api/wallet/deposits", {"amount": "10"}, {"owner": 404, "developer": 403, "viewer": 403}),
    ("PUT", "/api/wallet/auto-reload", {"enabled": False, "threshold": "5", "amount": "10"},
     {"owner": 404, "developer": 403, "viewer": 403}),
]


def fill(path: str, org: Org, role: str) -> str:
    return path.format(target=org.members["target"], owner_key=org.keys["owner"], own_key=org.keys[role],
                       own_mk=org.spare_mk[role], bot=org.bot, provider_key=org.provider_key)


async def test_permission_matrix(gw):
    failures = []
    for method, path, body, expected in MATRIX:
        for role in ROLES:
            org = await make_org(gw, provider_key=True)
            status, answer = await call(gw, method, fill(path, org, role), org.secrets[role], body)
            if status != expected[role]:
                failures.append(f"{role} {method} {path}: {status} (expected {expected[role]}) {answer}")
            elif status == 403:
                assert answer["error"]["code"] == "permission_denied", answer
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("method, path, body", [(m, p, b) for m, p, b, _ in MATRIX])
async def test_every_endpoint_refuses_without_a_management_key(gw, method, path, body):
    org = await make_org(gw, provider_key=True)
    target = fill(path, org, "owner")
    for secret, says in ((None, "didn't provide"), ("mwm-" + "x" * 43, "Incorrect"),
                         (org.key_secrets["owner"], "inference key"), ("nonsense", "not a Meterway")):
        status, answer = await call(gw, method, target, secret, body)
        assert status == 401, (secret, answer)
        assert answer["error"]["code"] == "invalid_management_key" and says in answer["error"]["message"], answer


async def test_management_key_is_refused_on_v1_and_inference_key_on_api(gw):
    org = await make_org(gw)
    status, answer = await call(gw, "POST", "/v1/chat/completions", org.secrets["owner"],
                                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401 and answer["error"]["code"] == "invalid_api_key", answer
    status, answer = await call(gw, "GET", "/api/wallet", org.key_secrets["owner"])
    assert status == 401 and "/v1" in answer["error"]["message"], answer


async def test_a_revoked_key_and_a_removed_member_are_refused(gw):
    org = await make_org(gw)
    status, _ = await call(gw, "DELETE", f"/api/members/{org.members['viewer']}", org.secrets["owner"])
    assert status == 200
    status, answer = await call(gw, "GET", "/api/wallet", org.secrets["viewer"])
    assert status == 401 and answer["error"]["code"] == "invalid_management_key", answer
    status, created = await call(gw, "POST", "/api/management-keys", org.secrets["developer"], {})
    assert status == 201 and created["key"].startswith("mwm-")
    status, _ = await call(gw, "DELETE", f"/api/management-keys/{created['id']}", org.secrets["developer"])
    assert status == 200
    status, answer = await call(gw, "GET", "/api/wallet", created["key"])
    assert status == 401 and "revoked" in answer["error"]["message"], answer


async def test_another_wallets_key_and_member_are_not_found(gw):
    mine, theirs = await make_org(gw), await make_org(gw)
    status, answer = await call(gw, "DELETE", f"/api/keys/{theirs.keys['owner']}", mine.secrets["owner"])
    assert status == 404, answer
    status, answer = await call(gw, "PATCH", f"/api/members/{theirs.members['target']}", mine.secrets["owner"],
                                {"role": "owner"})
    assert status == 404, answer


async def test_the_operator_creates_an_org_and_its_first_owner_key(gw):
    from tests.gateway_harness import ADMIN_TOKEN

    wallet_id = f"w{uuid.uuid4().hex[:10]}"
    gw.wallets.append(wallet_id)
    body = {"wallet": wallet_id, "name": "Acme", "owner_name": "Olive"}
    status, created = await call(gw, "POST", "/admin/orgs", ADMIN_TOKEN, body)
    assert status == 201 and created["owner"]["role"] == "owner", created
    secret = created["management_key"]["key"]
    status, wallet = await call(gw, "GET", "/api/wallet", secret)
    assert status == 200 and wallet["id"] == wallet_id and wallet["warning"]["level"] == "empty", wallet
    status, again = await call(gw, "POST", "/admin/orgs", ADMIN_TOKEN, body)
    assert status == 409 and again["error"]["code"] == "org_exists", again
    status, refused = await call(gw, "POST", "/admin/orgs", secret, body)
    assert status == 401, refused
    status, bad = await call(gw, "POST", "/admin/orgs", ADMIN_TOKEN, {**body, "owner_name": ""})
    assert status == 400 and bad["error"]["param"] == "owner_name", bad
