"""Issue 6, items 9, 11, 12: no open /admin, no secret in a log line, /metrics behind a token."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from config.settings import ConfigError, load_settings
from gateway.logs import REDACTED, RedactSecrets
from ledger.money import parse_usd
from tests.gateway_harness import ADMIN_TOKEN
from tests.test_admin_input import raw_http

STRONG = "c0ffee" + secrets.token_hex(16)


# --- item 9: the admin token ------------------------------------------------------------------

@pytest.mark.parametrize("field", ["admin_token", "metrics_token"])
@pytest.mark.parametrize("value", ["", "   ", "change-me", "x" * 31, "a" * 40, "tab\tinside" + "k" * 30])
def test_empty_or_weak_token_is_refused_at_load(monkeypatch, field: str, value: str) -> None:
    monkeypatch.setenv(f"MW_{field.upper()}", value)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert field in message, message
    if value.strip():
        assert value not in message  # the refusal never repeats the secret


def test_empty_admin_token_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "meterway.toml"
    config.write_text('admin_token = ""\n')
    with pytest.raises(ConfigError, match="admin_token is empty"):
        load_settings(config)


def test_strong_tokens_are_accepted_and_unset_means_off(monkeypatch) -> None:
    monkeypatch.delenv("MW_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("MW_METRICS_TOKEN", raising=False)
    off = load_settings()
    assert off.admin_token is None and off.metrics_token is None
    monkeypatch.setenv("MW_ADMIN_TOKEN", STRONG)
    monkeypatch.setenv("MW_METRICS_TOKEN", STRONG[::-1])
    on = load_settings()
    assert on.admin_token is not None and on.admin_token.get_secret_value() == STRONG
    assert on.metrics_token is not None and on.metrics_token.get_secret_value() == STRONG[::-1]


async def test_no_admin_routes_without_an_admin_token(gateway_factory) -> None:
    gw = await gateway_factory(admin_token=None)
    wallet, _ = await gw.funded_key("1")
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"}):
            async with session.post(f"{gw.base_url}/admin/wallets/{wallet}/credits", json={"amount": "1000"},
                                    headers=headers) as r:
                body = await r.json(content_type=None)
                assert r.status == 404 and r.content_type == "application/json", (r.status, body)
                assert set(body["error"]) == {"message", "type", "param", "code"}, body
            async with session.get(f"{gw.base_url}/admin/keys", headers=headers) as r:
                assert r.status == 404, await r.text()
    assert await gw.balance(wallet) == parse_usd("1")


async def test_admin_needs_the_exact_token(gw) -> None:
    wallet, _ = await gw.funded_key("1")
    async with aiohttp.ClientSession() as session:
        for auth in ("", "Bearer ", "Bearer", f"Bearer {ADMIN_TOKEN[:-1]}", f"Bearer {ADMIN_TOKEN}x", ADMIN_TOKEN):
            async with session.post(f"{gw.base_url}/admin/wallets/{wallet}/credits", json={"amount": "1000"},
                                    headers={"Authorization": auth}) as r:
                body = await r.json(content_type=None)
                assert r.status == 401 and body["error"]["code"] == "invalid_admin_token", (auth, body)
    assert await gw.balance(wallet) == parse_usd("1")


# --- item 12: /metrics ----------------------------------------------------------------------

async def test_metrics_with_a_token_needs_it(gateway_factory) -> None:
    gw = await gateway_factory(metrics_token=STRONG)
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {ADMIN_TOKEN}"},
                        {"Authorization": f"Bearer {STRONG}x"}, {"Authorization": STRONG}):
            async with session.get(f"{gw.base_url}/metrics", headers=headers) as r:
                body = await r.json(content_type=None)
                assert r.status == 401 and r.content_type == "application/json", (headers, body)
                assert body["error"]["code"] == "invalid_metrics_token", body
                assert "meterway_charged_nusd_total" not in str(body)
        async with session.get(f"{gw.base_url}/metrics", headers={"Authorization": f"Bearer {STRONG}"}) as r:
            assert r.status == 200
            assert "meterway_requests_total" in await r.text()
    status, ctype, body = await raw_http(gw, b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
                                         + f"Authorization: Bearer {STRONG}".encode() + b"\xff\r\n\r\n")
    assert status == 401 and ctype == "application/json" and body["error"]["code"] == "invalid_metrics_token", body


async def test_metrics_without_a_token_stays_open(gw) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{gw.base_url}/metrics") as r:
            assert r.status == 200 and "meterway_requests_total" in await r.text()


# --- item 11: no secret in a log line ---------------------------------------------------------

def test_redactor_rewrites_aiohttps_record_of_an_oversized_header() -> None:
    key = "mw-" + secrets.token_urlsafe(32)
    admin = STRONG
    redactor = RedactSecrets([admin])
    try:
        raise ValueError(f"400, message:\n  Got more than 8190 bytes when reading: b'Bearer {key}AAAA...'.")
    except ValueError as exc:
        record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, "Error handling request from %s: %s",
                                   ("127.0.0.1", f"Authorization: {admin}"), (type(exc), exc, exc.__traceback__))
    assert redactor.filter(record)
    text = logging.Formatter().format(record)
    for secret in (key, admin):
        assert secret[:12] not in text, text
    assert REDACTED in text and "Error handling request from 127.0.0.1" in text and "Traceback" in text


def test_redactor_hides_management_keys_and_invitation_links() -> None:
    management = "mwm-" + secrets.token_urlsafe(32)
    token = secrets.token_urlsafe(32)
    redactor = RedactSecrets()
    record = logging.LogRecord("meterway", logging.WARNING, __file__, 1, "key %s, link %s", (
        management, f"https://gw.example.com/api/invites/{token}/accept"), None)
    assert redactor.filter(record)
    text = record.getMessage()
    assert management[4:16] not in text and token[:12] not in text, text
    assert text == f"key mwm-{REDACTED}, link https://gw.example.com/api/invites/{REDACTED}/accept", text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_up(base_url: str, process: asyncio.subprocess.Process, log: Path) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            if process.returncode is not None:
                pytest.fail(f"meterway serve exited {process.returncode}:\n{_text(log)}")
            try:
                async with session.get(f"{base_url}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"meterway serve did not come up:\n{_text(log)}")


async def test_no_secret_reaches_the_log_of_a_real_gateway(fake_upstream: str, tmp_path: Path) -> None:
    """`meterway serve` as deployed; everything it writes (stdout and stderr) is searched for secrets."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    admin, metrics, provider_key = STRONG, "m3tr1cs" + secrets.token_hex(16), "sk-proj-" + secrets.token_urlsafe(24)
    wrong_admin = "w7ong" + secrets.token_hex(16)
    bad_key = "mw-" + secrets.token_urlsafe(32)
    config = tmp_path / "meterway.toml"
    config.write_text(
        f'sqlite_path = "{tmp_path / "gw.sqlite3"}"\n[listen]\nhost = "127.0.0.1"\nport = {port}\n'
        f'[providers.fake]\nbase_url = "{fake_upstream}"\napi_key_env = "MW_TEST_PROVIDER_KEY"\nmodels = ["gpt-4o-mini"]\n'
        '[models."gpt-4o-mini"]\ninput_per_1m = "0.15"\noutput_per_1m = "0.60"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {"MW_ADMIN_TOKEN": admin, "MW_METRICS_TOKEN": metrics, "MW_TEST_PROVIDER_KEY": provider_key}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "--config", str(config), "serve",
            stdout=sink, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        await _wait_up(base, process, log)
        as_admin = {"Authorization": f"Bearer {admin}"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{base}/admin/wallets", json={"id": "acme"}, headers=as_admin) as r:
                assert r.status == 201, await r.text()
            async with session.post(f"{base}/admin/wallets/acme/credits", json={"amount": "1"}, headers=as_admin) as r:
                assert r.status == 201, await r.text()
            async with session.post(f"{base}/admin/keys", json={"wallet": "acme"}, headers=as_admin) as r:
                key = (await r.json())["key"]
            chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            async with session.post(f"{base}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"}) as r:
                assert r.status == 200, await r.text()
            async with session.post(f"{base}/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {bad_key}"}) as r:
                assert r.status == 401
            async with session.get(f"{base}/admin/keys", headers={"Authorization": f"Bearer {wrong_admin}"}) as r:
                assert r.status == 401
            async with session.get(f"{base}/metrics", headers={"Authorization": f"Bearer {metrics}"}) as r:
                assert r.status == 200
        padding = "A" * 9000  # over aiohttp's max_field_size (8190)
        for secret in (key, bad_key, admin, metrics):
            for value in (f"Bearer {secret}{padding}", f"{secret}{padding}"):
                answer = await _raw(port, f"GET /v1/models HTTP/1.1\r\nHost: gw\r\nAuthorization: {value}\r\n\r\n".encode())
                assert answer == b"" or answer.split(b" ", 2)[1].startswith(b"4"), answer[:200]
            await _raw(port, f"GET /v1/models?api_key={secret}{padding} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
            await _raw(port, f"GET /admin/keys HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {secret}".encode()
                       + b"\xff\xfe\r\nConnection: close\r\n\r\n")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
    text = _text(log)
    assert "bad HTTP request" in text, text  # the oversized headers were seen, and logged
    for name, secret in (("key", key), ("bad key", bad_key), ("admin token", admin), ("wrong admin token", wrong_admin),
                         ("metrics token", metrics), ("provider key", provider_key)):
        assert secret[:12] not in text, f"the {name} is in the log:\n{text}"
