"""POST /admin/requests/{id}/refund: an operator gives a request's charge back, once, over HTTP."""

from __future__ import annotations

from ledger.money import parse_usd
from tests.test_admin_input import assert_openai_error, call


async def test_an_operator_refunds_a_request_once_over_http(gw) -> None:
    status, _, _ = await call(gw, "POST", "/admin/wallets", {"id": "refund-1", "name": "Refunds"})
    gw.wallets.append("refund-1")
    assert status == 201
    await call(gw, "POST", "/admin/wallets/refund-1/credits", {"amount": "2.00", "transfer_id": "fund-refund-1"})
    status, _, key = await call(gw, "POST", "/admin/keys", {"wallet": "refund-1", "name": "demo"})
    assert status == 201, key
    response = await gw.client(key["key"]).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    request_id = response.headers["x-request-id"]
    charged = parse_usd(response.headers["x-usage-cost"])
    assert charged > 0
    await gw.settled_everything()

    status, _, first = await call(gw, "POST", f"/admin/requests/{request_id}/refund", {"reason": "garbled answer"})
    assert status == 201 and first["outcome"] == "created" and first["amount_nusd"] == charged, first
    assert first["wallet"] == "refund-1" and parse_usd(first["balance"]) == parse_usd("2"), first
    status, _, again = await call(gw, "POST", f"/admin/requests/{request_id}/refund", {"reason": "garbled answer"})
    assert status == 200 and again["outcome"] == "exists" and again["balance"] == first["balance"], again
    status, _, txs = await call(gw, "GET", "/admin/wallets/refund-1/transactions")
    refunds = [t for t in txs["data"] if t["kind"] == "refund"]
    assert len(refunds) == 1 and refunds[0]["memo"] == "garbled answer", txs


async def test_a_refund_needs_a_reason_and_a_settled_request(gw) -> None:
    status, content_type, body = await call(gw, "POST", "/admin/requests/req_nothing/refund", {"reason": "x"})
    assert_openai_error(status, content_type, body, 404)
    for payload, param in (({}, "reason"), ({"reason": ""}, "reason"), ({"reason": 7}, "reason"),
                           ({"reason": "x", "amount": "1"}, "amount")):
        status, content_type, body = await call(gw, "POST", "/admin/requests/req_nothing/refund", payload)
        assert_openai_error(status, content_type, body, 400)
        assert body["error"]["param"] == param, body
    status, _, body = await call(gw, "POST", "/admin/requests/req_x/refund", {"reason": "x"}, {"Authorization": "Bearer no"})
    assert status == 401 and body["error"]["code"] == "invalid_admin_token", body
