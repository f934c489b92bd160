"""Mistyped management input gets a JSON 4xx in OpenAI's error shape, never aiohttp's plain-text 500.

Run on both backends: Postgres refuses NUL bytes and negative LIMITs that
SQLite takes, so a case can pass on one and crash on the other.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from ledger.money import parse_usd
from tests.gateway_harness import ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def assert_openai_error(status: int, content_type: str, body: Any, expected: int | tuple[int, ...] = 400) -> None:
    wanted = expected if isinstance(expected, tuple) else (expected,)
    assert status in wanted, (status, body)
    assert content_type == "application/json", (content_type, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert error["type"] in ("invalid_request_error", "server_error"), error


async def call(gw, method: str, path: str, json_body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
    data = None if json_body is None else orjson.dumps(json_body)
    all_headers = {**ADMIN, "Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session:
        # encoded=True: send the path as written (%00 and all), as an attacker would.
        url = aiohttp.client.URL(f"{gw.base_url}{path}", encoded=True)
        async with session.request(method, url, data=data, headers=all_headers) as response:
            raw = await response.read()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode(errors="replace")
            return response.status, response.content_type, body


async def raw_http(gw, request: bytes) -> tuple[int, str, Any]:
    """One request written byte for byte: headers an HTTP client library would refuse to send."""
    host, port = gw.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    content_type = headers.get("content-type", "").split(";")[0]
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = payload.decode(errors="replace")
    return status, content_type, body


async def test_credit_with_mistyped_fields_is_a_json_400(gw) -> None:
    wallet, _ = await gw.funded_key("1")
    cases = [
        {"amount": "1.00", "transfer_id": 12345},
        {"amount": "1.00", "memo": {"nested": "object"}},
        {"amount": "1.00", "memo": ["a", "list"]},
        {"amount": "1.00", "transfer_id": "inv\u0000ice"},
        {"amount": "1.00", "memo": "nul \u0000 byte"},
        {"amount": "1.00", "transfer_id": "x" * 500},
        {"amount": 1.1},
        {"amount": {"usd": "1"}},
        {"amount": "-1"},
        {"amount": "0"},
        {"amount": "NaN"},
        {"amount": "1e400"},
        {"amount": "0.0000000001"},
        {"amount": "1.00", "unknown_field": "typo"},
        ["not", "an", "object"],
        "a string",
    ]
    for body in cases:
        status, ctype, payload = await call(gw, "POST", f"/admin/wallets/{wallet}/credits", body)
        assert_openai_error(status, ctype, payload)
    for body, param in (({"amount": "1.00", "transfer_id": 12345}, "transfer_id"), ({"amount": "1", "memo": {"a": 1}}, "memo"),
                        ({"amount": 1.1}, "amount"), ({"memo": "no amount"}, "amount"), ({"amount": "1", "x": 1}, "x")):
        status, ctype, payload = await call(gw, "POST", f"/admin/wallets/{wallet}/credits", body)
        assert_openai_error(status, ctype, payload)
        assert payload["error"]["param"] == param and "pattern" not in payload["error"]["message"], payload
    assert await gw.balance(wallet) == parse_usd("1")


async def test_create_wallet_and_key_with_mistyped_fields_are_json_400(gw) -> None:
    wallet, _ = await gw.funded_key("0")
    for body in ({"id": "ok-wallet", "name": {"an": "object"}}, {"id": 42}, {"id": "bad\u0000id"},
                 {"id": "ok-wallet2", "name": "n" * 5000}, {"name": "no id"}):
        status, ctype, payload = await call(gw, "POST", "/admin/wallets", body)
        assert_openai_error(status, ctype, payload)
    for body in ({"wallet": wallet, "name": {"an": "object"}}, {"wallet": wallet, "bot": ["x"]},
                 {"wallet": wallet, "name": "nul\u0000"}, {"wallet": 7}, {}):
        status, ctype, payload = await call(gw, "POST", "/admin/keys", body)
        assert_openai_error(status, ctype, payload)
    assert await gw.state.book.wallet("ok-wallet") is None
    assert len(await gw.state.book.list_keys(wallet)) == 1  # only funded_key's own key


async def test_transactions_limit_is_bounded(gw) -> None:
    wallet, _ = await gw.funded_key("1")
    for limit in ("-1", "0", "201", "abc", "1.5", "99999999999999999999", "", "%00", "%FF", "5%00"):
        status, ctype, payload = await call(gw, "GET", f"/admin/wallets/{wallet}/transactions?limit={limit}")
        assert_openai_error(status, ctype, payload)
        assert payload["error"]["param"] == "limit", payload
    status, _, payload = await call(gw, "GET", f"/admin/wallets/{wallet}/transactions?limit=200")
    assert status == 200 and len(payload["data"]) == 1, payload


async def test_nul_and_junk_in_path_ids_are_json_4xx(gw) -> None:
    wallet, key = await gw.funded_key("1")
    for method, path in (("GET", "/admin/wallets/a%00b"), ("POST", "/admin/wallets/a%00b/credits"),
                         ("GET", "/admin/wallets/a%00b/transactions"), ("DELETE", "/admin/keys/a%00b"),
                         ("GET", "/admin/keys?wallet=a%00b"), ("GET", "/admin/keys?wallet=%FF"),
                         ("GET", "/admin/keys?wallet=acme&unknown=1"), ("GET", f"/admin/wallets/{'w' * 300}"),
                         ("GET", "/admin/wallets/%FF%FE")):
        status, ctype, payload = await call(gw, method, path, {"amount": "1"} if method == "POST" else None)
        assert_openai_error(status, ctype, payload, (400, 404))
    for path in ("/v1/usage/%00", "/v1/usage/req_a%00b", "/v1/usage/%FF", f"/v1/usage/{'r' * 300}"):
        status, ctype, payload = await call(gw, "GET", path, headers={"Authorization": f"Bearer {key}"})
        assert_openai_error(status, ctype, payload, (400, 404))
    assert await gw.balance(wallet) == parse_usd("1")


@pytest.mark.parametrize("path", ["/admin/wallets/x", "/v1/models", "/v1/usage/req_x", "/metrics"])
async def test_non_utf8_authorization_is_a_json_401(gw, path: str) -> None:
    status, ctype, payload = await raw_http(gw, (
        f"GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n".encode()
        + b"Authorization: Bearer \xff\xfe\xc3\x28mw-\x80\r\n\r\n"))
    if path == "/metrics" and status == 200:
        return  # no metrics token in this gateway: /metrics is open, and must not crash
    assert_openai_error(status, ctype, payload, 401)


async def test_non_utf8_authorization_on_a_proxied_endpoint_is_a_json_401(gw) -> None:
    body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}'
    status, ctype, payload = await raw_http(gw, (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nContent-Type: application/json\r\n"
        + b"Authorization: Bearer mw-\xff\xfe\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body))
    assert_openai_error(status, ctype, payload, 401)


async def test_unexpected_error_is_a_json_500_with_a_request_id(gw, monkeypatch, caplog) -> None:
    """The catch-all: an exception nobody expected is logged with its traceback, and the client sees no internals."""
    from gateway.money.operations import Operations

    async def broken(self, wallet_id: str) -> None:
        raise RuntimeError("internal detail: connection string postgres://secret@db")

    wallet, _ = await gw.funded_key("1")
    monkeypatch.setattr(Operations, "show", broken)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.base_url}/admin/wallets/{wallet}", headers=ADMIN) as response:
            status, ctype, body = response.status, response.content_type, await response.json(content_type=None)
            request_id = response.headers.get("X-Request-Id")
    assert_openai_error(status, ctype, body, 500)
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "internal_error"
    assert request_id and request_id in body["error"]["message"]
    assert "internal detail" not in orjson.dumps(body).decode()
    logged = [r for r in caplog.records if r.exc_info and request_id in r.getMessage()]
    assert logged and "internal detail" in str(logged[0].exc_info[1])


async def test_valid_management_input_still_works(gw) -> None:
    status, _, created = await call(gw, "POST", "/admin/wallets", {"id": "acme-1", "name": "Acme"})
    assert status == 201 and created["id"] == "acme-1", created
    status, _, credited = await call(gw, "POST", "/admin/wallets/acme-1/credits",
                                     {"amount": "10.50", "transfer_id": "invoice-7", "memo": "first"})
    assert status == 201 and credited["balance"] == "10.5", credited
    status, _, again = await call(gw, "POST", "/admin/wallets/acme-1/credits",
                                  {"amount": "10.50", "transfer_id": "invoice-7", "memo": "first"})
    assert status == 200 and again["outcome"] == "exists" and again["balance"] == "10.5", again
    status, _, key = await call(gw, "POST", "/admin/keys", {"wallet": "acme-1", "name": "demo", "bot": None})
    assert status == 201 and key["key"].startswith("mw-"), key
    status, _, keys = await call(gw, "GET", "/admin/keys?wallet=acme-1")
    assert status == 200 and [k["id"] for k in keys["data"]] == [key["id"]], keys
    status, _, txs = await call(gw, "GET", "/admin/wallets/acme-1/transactions?limit=1")
    assert status == 200 and len(txs["data"]) == 1, txs
    status, _, revoked = await call(gw, "DELETE", f"/admin/keys/{key['id']}")
    assert status == 200 and revoked["revoked"] is True, revoked
    gw.wallets.append("acme-1")
