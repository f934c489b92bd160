"""GET/PATCH /api/wallet and the wallet's history through the API, on both backends.

The overview's figures and warning levels as the balance crosses them; each
transaction type with its description; filters; pagination at its bounds.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from gateway.money.wallet_owners import WarningLevel, describe, warning_level
from ledger.book import FUNDING_ACCOUNT, Transfer, TransferKind
from ledger.history import Entry, UsageSummary
from ledger.money import parse_usd
from ledger.owners import Deposit, DepositStatus, Role
from tests.test_api_permissions import call, make_org, owners

LOW, CRITICAL = parse_usd("5"), parse_usd("1")


@pytest.mark.parametrize("usd, level", [("0", "empty"), ("0.000000001", "critical"), ("0.99", "critical"),
                                        ("1", "low"), ("4.999999999", "low"), ("5", "ok"), ("100", "ok")])
def test_warning_levels_at_their_edges(usd, level):
    assert warning_level(parse_usd(usd), LOW, CRITICAL) is WarningLevel(level)


async def _debit(gw, wallet_id: str, usd: str) -> None:
    await gw.state.book.transfer(Transfer(f"debit-{uuid.uuid4().hex}", wallet_id, FUNDING_ACCOUNT, parse_usd(usd),
                                          TransferKind.ADJUSTMENT, memo="test debit"))
    wallet = await gw.state.book.wallet(wallet_id)
    await gw.state.holds.sync(wallet_id, wallet.balance_nusd, wallet.version)


async def test_overview_and_warning_levels_as_the_balance_falls(gw):
    org = await make_org(gw, "6")
    status, body = await call(gw, "GET", "/api/wallet", org.secrets["viewer"])
    assert status == 200, body
    assert body["balance"] == {"usd": "6", "nusd": parse_usd("6")}
    assert body["available"]["nusd"] == parse_usd("6") and body["held"]["nusd"] == 0
    assert body["auto_reload"] is None and body["name"] == "Acme"
    assert body["warning"] == {"level": "ok", "low_threshold": {"usd": "5", "nusd": LOW},
                               "critical_threshold": {"usd": "1", "nusd": CRITICAL}}
    for usd, level in (("1.5", "low"), ("4", "critical"), ("0.5", "empty")):
        await _debit(gw, org.wallet_id, usd)
        status, body = await call(gw, "GET", "/api/wallet", org.secrets["owner"])
        assert body["warning"]["level"] == level, (usd, body)


async def test_an_org_sets_its_own_low_threshold(gw):
    org = await make_org(gw, "8")
    status, body = await call(gw, "PATCH", "/api/wallet", org.secrets["owner"], {"low_balance_threshold": "10.00"})
    assert status == 200 and body["warning"]["level"] == "low", body
    assert body["warning"]["low_threshold"]["nusd"] == parse_usd("10")
    status, body = await call(gw, "PATCH", "/api/wallet", org.secrets["owner"], {"low_balance_threshold": None})
    assert status == 200 and body["warning"]["level"] == "ok", body
    status, body = await call(gw, "PATCH", "/api/wallet", org.secrets["owner"], {"low_balance_threshold": 10})
    assert status == 400 and body["error"]["param"] == "low_balance_threshold", body


async def test_display_unit_is_shown_when_configured(gateway_factory):
    gw = await gateway_factory(wallet={"display_unit": {"name": "credits", "per_usd": 10000}})
    org = await make_org(gw, "12.5")
    status, body = await call(gw, "GET", "/api/wallet", org.secrets["owner"])
    assert body["balance"] == {"usd": "12.5", "nusd": 12_500_000_000, "display": {"amount": "125000", "unit": "credits"}}


async def test_transactions_of_each_kind_with_their_descriptions(gw):
    org = await make_org(gw, "20")
    client = gw.client(org.key_secrets["developer"])
    response = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    request_id = response.headers["x-request-id"]
    await gw.settled_everything()
    await gw.ops.refund(request_id, "the answer was cut")
    store = gw.state.book
    await store.create_deposit(Deposit("dep_1", org.wallet_id, "card", parse_usd("3"), "3.00", "usd",
                                       DepositStatus.PENDING, datetime.now(UTC).isoformat()))
    await store.complete_deposit("dep_1")
    status, body = await call(gw, "GET", "/api/wallet/transactions", org.secrets["owner"])
    assert status == 200, body
    by_type = {e["type"]: e for e in body["data"]}
    assert set(by_type) == {"usage", "refund", "deposit", "adjustment"}, body
    assert body["total"] == 4 and body["has_more"] is False and body["next_cursor"] is None
    usage = by_type["usage"]
    assert usage["amount"]["nusd"] < 0 and usage["request_id"] == request_id
    assert usage["description"].startswith("gpt-4o-mini via /v1/chat/completions: ")
    assert f"(key '{org.keys['developer']}')" in usage["description"]
    assert by_type["refund"]["description"] == f"Refund of request {request_id}: the answer was cut"
    assert by_type["refund"]["amount"]["nusd"] == -usage["amount"]["nusd"]
    assert by_type["deposit"]["description"] == "Deposit dep_1 (card)" and by_type["deposit"]["amount"]["usd"] == "3"
    assert by_type["adjustment"]["description"] == "test funding"
    assert all(e["created_at"].endswith("Z") for e in body["data"])
    # filters: type, and a time range that holds nothing
    status, body = await call(gw, "GET", "/api/wallet/transactions?type=usage,refund", org.secrets["viewer"])
    assert {e["type"] for e in body["data"]} == {"usage", "refund"} and body["total"] == 2
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status, body = await call(gw, "GET", f"/api/wallet/transactions?from={future}", org.secrets["owner"])
    assert status == 200 and body["data"] == [] and body["total"] == 0
    # a developer sees its own keys' usage only; one with no key sees nothing
    invitation = await owners(gw).invite(org.wallet_id, "New", Role.DEVELOPER, datetime.now(UTC))
    _, _, fresh = await owners(gw).accept(invitation.token)
    status, body = await call(gw, "GET", "/api/wallet/transactions", fresh.secret)
    assert status == 200 and body["data"] == [] and body["total"] == 0, body
    status, body = await call(gw, "GET", "/api/wallet/transactions", org.secrets["developer"])
    assert [e["type"] for e in body["data"]] == ["usage"], body
    status, body = await call(gw, "GET", "/api/wallet/deposits", org.secrets["owner"])
    assert status == 200 and body["total"] == 1, body
    assert body["data"][0]["id"] == "dep_1" and body["data"][0]["status"] == "completed"
    assert body["data"][0]["amount_paid"] == {"amount": "3.00", "currency": "usd"}


async def test_unknown_type_and_bad_times_are_400(gw):
    org = await make_org(gw)
    for query, param in (("type=usage,bogus", "type"), ("from=yesterday", "from"),
                         ("to=2026-11-01T00:00:00", "to"), ("cursor=nope", "cursor")):
        status, body = await call(gw, "GET", f"/api/wallet/transactions?{query}", org.secrets["owner"])
        assert status == 400 and body["error"]["param"] == param, (query, body)


@pytest.mark.parametrize("limit, status", [("0", 400), ("1", 200), ("200", 200), ("201", 400), ("abc", 400),
                                           ("-1", 400), ("1.5", 400)])
async def test_limit_bounds(gw, limit, status):
    org = await make_org(gw)
    got, body = await call(gw, "GET", f"/api/wallet/transactions?limit={limit}", org.secrets["owner"])
    assert got == status, body
    if status == 400:
        assert body["error"]["param"] == "limit", body
    else:
        assert len(body["data"]) == 1 and body["total"] == 1


async def test_cursor_walk_covers_every_entry_once(gw):
    org = await make_org(gw)
    for i in range(6):
        await gw.ops.credit(org.wallet_id, parse_usd("1"), memo=f"credit {i}")
    seen: list[str] = []
    path = "/api/wallet/transactions?limit=2"
    while True:
        status, body = await call(gw, "GET", path, org.secrets["owner"])
        assert status == 200 and body["total"] == 7, body
        seen += [e["id"] for e in body["data"]]
        if not body["has_more"]:
            break
        path = f"/api/wallet/transactions?limit=2&cursor={body['next_cursor']}"
    assert len(seen) == 7 and len(set(seen)) == 7


def test_every_kind_has_a_description_and_an_unknown_one_too():
    usage = UsageSummary("key_1", "gpt-4o-mini", "chat", "ok", 1234, 0, 56, 10)
    cases = {
        "usage": "gpt-4o-mini via /v1/chat/completions: 1,234 in + 56 out tokens (key 'key_1')",
        "deposit": "Deposit", "refund": "Refund of request req_1", "adjustment": "Adjustment by the operator",
        "reversal": "Reversal", "payment": "Payment", "discount": "Discount", "reward": "Reward",
        "expiry": "Expired credit", "earning": "Earning", "payout": "Payout", "shortfall": "Unpaid part of a request",
        "loyalty_bonus": "Loyalty bonus",
    }
    for kind, text in cases.items():
        entry = Entry("t1", kind, -1, "x", "2026-11-24T00:00:00.000Z", request_id="req_1",
                      usage=usage if kind == "usage" else None)
        assert describe(entry) == text, kind


@pytest.mark.parametrize("wallet", [{"low_balance_usd": "1", "critical_balance_usd": "2"},
                                    {"critical_balance_usd": "0"}, {"low_balance_usd": "five"},
                                    {"invite_ttl_s": 0}, {"public_base_url": "gw.example.com"},
                                    {"management_key_cache_ttl_s": 3600},
                                    {"display_unit": {"name": "credits", "per_usd": 0}}])
def test_wallet_settings_are_refused_when_inconsistent(wallet):
    from pydantic import ValidationError

    from config.settings import Settings

    with pytest.raises(ValidationError):
        Settings(wallet=wallet)
