"""An inference key's limits (issue 10, first part): an expiry time and a model allow-list, on both backends.

A refused call is refused before any money moves: no hold, no usage row, the
balance untouched. The limits are given when the key is made (admin API,
wallet API, CLI), and a key that could never work is refused then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from tests.test_admin_input import call as admin_call
from tests.test_api_permissions import call, make_org
from tests.test_cli import meterway
from tests.test_multiprocess import write_config

SOON = timedelta(seconds=1.5)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_a_key_kept_to_one_model_calls_it_and_nothing_else(gw) -> None:
    wallet, _ = await gw.funded_key("5")
    later = iso(datetime.now(UTC) + timedelta(days=30))
    status, _, made = await admin_call(gw, "POST", "/admin/keys", {"wallet": wallet, "models": ["gpt-4o-mini"],
                                                                    "expires_at": later})
    assert status == 201 and made["models"] == ["gpt-4o-mini"] and made["expires_at"].startswith(later[:19]), made
    client = gw.client(made["key"])
    before = await gw.balance(wallet)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await client.chat.completions.create(model="gpt-3.5-turbo", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 403 and refused.value.code == "model_not_allowed"
    assert await gw.balance(wallet) == before  # refused before any hold: nothing charged
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices
    assert [m.id async for m in client.models.list()] == ["gpt-4o-mini"]
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("gpt-3.5-turbo")
    await gw.settled_everything()


async def test_an_expired_key_is_a_401_and_charges_nothing(gw) -> None:
    wallet, _ = await gw.funded_key("5")
    status, _, made = await admin_call(gw, "POST", "/admin/keys", {"wallet": wallet,
                                                                    "expires_at": iso(datetime.now(UTC) + SOON)})
    assert status == 201, made
    client = gw.client(made["key"])
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    await gw.settled_everything()
    spent = await gw.balance(wallet)
    await asyncio.sleep(SOON.total_seconds() + 0.2)  # the cached record expires on its own clock, not the cache's
    with pytest.raises(openai.AuthenticationError) as refused:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "key_expired" and refused.value.response.headers["x-should-retry"] == "false"
    assert await gw.balance(wallet) == spent


@pytest.mark.parametrize("limits, param, code", [
    ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at", "invalid_value"),
    ({"expires_at": "2099-01-01T00:00:00"}, "expires_at", "invalid_value"),  # no timezone
    ({"models": ["gpt-9"]}, "models", "unknown_model"),
    ({"models": []}, "models", "invalid_value"),
    ({"models": "gpt-4o-mini"}, "models", "invalid_value"),
])
async def test_a_key_that_could_never_work_is_refused_when_made(gw, limits, param, code) -> None:
    wallet, _ = await gw.funded_key("1")
    status, _, error = await admin_call(gw, "POST", "/admin/keys", {"wallet": wallet, **limits})
    assert status == 400 and error["error"]["param"] == param and error["error"]["code"] == code, error
    org = await make_org(gw, "1")
    status, error = await call(gw, "POST", "/api/keys", org.secrets["developer"], {"name": "x", **limits})
    assert status == 400 and error["error"]["param"] == param, error


async def test_a_member_limits_its_own_key_through_the_wallet_api(gw) -> None:
    org = await make_org(gw, "3")
    status, made = await call(gw, "POST", "/api/keys", org.secrets["developer"],
                              {"name": "ci", "models": ["gpt-4o-mini", "gpt-4o-mini"]})
    assert status == 201 and made["models"] == ["gpt-4o-mini"] and made["expires_at"] is None, made
    status, listed = await call(gw, "GET", "/api/keys", org.secrets["owner"])
    assert next(k for k in listed["data"] if k["id"] == made["id"])["models"] == ["gpt-4o-mini"], listed


def test_keys_create_takes_limits_from_the_command_line(tmp_path: Path) -> None:
    config = ["--config", str(write_config(tmp_path, "http://127.0.0.1:9/v1"))]  # the models a key may name
    assert meterway(tmp_path, "migrate", *config).returncode == 0
    assert meterway(tmp_path, "wallet", "create", "acme", *config).returncode == 0
    made = meterway(tmp_path, "keys", "create", "--wallet", "acme", "--model", "gpt-4o-mini",
                    "--expires-at", "2099-01-01T00:00:00Z", *config)
    assert made.returncode == 0 and "limits: expires 2099-01-01T00:00:00.000Z; models gpt-4o-mini" in made.stdout, made
    for args, says in ((["--model", "gpt-9"], "unknown model 'gpt-9'"), (["--expires-at", "2001-01-01T00:00:00Z"],
                                                                        "must be in the future")):
        refused = meterway(tmp_path, "keys", "create", "--wallet", "acme", *args, *config)
        assert refused.returncode == 1 and says in refused.stderr, refused
