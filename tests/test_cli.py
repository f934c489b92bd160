"""The operator's commands, run as an operator runs them (embedded store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def meterway(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["MW_SQLITE_PATH"] = str(tmp_path / "cli.sqlite3")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], env=env, capture_output=True, text=True, timeout=60)


def test_wallets_keys_and_credits_from_the_command_line(tmp_path: Path) -> None:
    assert meterway(tmp_path, "migrate").returncode == 0
    assert meterway(tmp_path, "wallet", "create", "acme", "--name", "Acme").stdout.strip() == "created wallet acme"
    credited = meterway(tmp_path, "wallet", "credit", "acme", "12.5", "--id", "invoice-1", "--memo", "bank transfer")
    assert credited.stdout.strip() == "created: acme balance 12.5 USD"
    again = meterway(tmp_path, "wallet", "credit", "acme", "12.5", "--id", "invoice-1", "--memo", "bank transfer")
    assert again.stdout.strip() == "exists: acme balance 12.5 USD", "a retried credit must not add money twice"
    conflict = meterway(tmp_path, "wallet", "credit", "acme", "99", "--id", "invoice-1")
    assert conflict.returncode == 1 and "different content" in conflict.stderr
    assert "balance:   12.5 USD" in meterway(tmp_path, "wallet", "show", "acme").stdout
    history = meterway(tmp_path, "wallet", "transactions", "acme").stdout
    assert "adjustment\t+12.5\tinvoice-1\tbank transfer" in history

    created = meterway(tmp_path, "keys", "create", "--wallet", "acme", "--name", "ci", "--bot", "bot-1")
    fields = dict(line.split(":", 1) for line in created.stdout.strip().splitlines())
    secret, key_id = fields["key"].strip(), fields["id"].strip()
    assert secret.startswith("mw-") and len(secret) == 46
    listed = meterway(tmp_path, "keys", "list").stdout
    assert key_id in listed and "active" in listed and secret not in listed, "the secret is shown only once"
    assert secret not in (tmp_path / "cli.sqlite3").read_bytes().decode("latin-1"), "secrets are stored hashed"
    assert meterway(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert "revoked" in meterway(tmp_path, "keys", "list").stdout
    assert meterway(tmp_path, "keys", "revoke", key_id).returncode == 1
    limited = meterway(tmp_path, "keys", "create", "--wallet", "acme", "--total-limit", "20", "--daily-limit", "1.5")
    assert limited.returncode == 0 and "spend:  lifetime $20, daily $1.5" in limited.stdout, limited


@pytest.mark.parametrize("args,message", [
    (("wallet", "credit", "acme", "-1"), "non-negative"),
    (("wallet", "credit", "acme", "0.0000000001"), "precision"),
    (("wallet", "show", "nobody"), "no wallet"),
    (("keys", "create", "--wallet", "nobody"), "no wallet"),
    (("wallet", "create", "bad id!"), "wallet id"),
    (("wallet", "credit", "acme", "1", "--id", "req_0123"), "reserved for requests"),
    (("keys", "create", "--wallet", "acme", "--bot-id", "bot_ghost"), "no bot"),
    (("keys", "create", "--wallet", "acme", "--daily-limit", "-1"), "non-negative"),
])
def test_bad_operator_input_is_a_clear_message(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    meterway(tmp_path, "wallet", "create", "acme")
    result = meterway(tmp_path, *args)
    assert result.returncode != 0 and message in result.stderr, result


def test_invalid_config_is_reported_at_start(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[providers.p]\nbase_url = "ftp://x"\nmodels = ["m"]\n[models.m]\ninput_per_1m = "0.1234567891"\n')
    result = meterway(tmp_path, "--config", str(config), "serve")
    assert result.returncode == 2
    assert "providers.p.base_url" in result.stderr and "models.m" in result.stderr


def test_an_operator_refunds_a_request_once(tmp_path: Path) -> None:
    import asyncio
    import dataclasses

    from ledger.sqlite_book import SqliteBook
    from tests.test_ledger_contract import usage

    assert meterway(tmp_path, "migrate").returncode == 0
    meterway(tmp_path, "wallet", "create", "acme")
    meterway(tmp_path, "wallet", "credit", "acme", "1")

    async def settle() -> None:
        book = SqliteBook(str(tmp_path / "cli.sqlite3"))
        try:
            await book.settle_batch([dataclasses.replace(usage("req_bad", "acme", 250_000_000), key_id="k")])
        finally:
            await book.close()

    asyncio.run(settle())
    first = meterway(tmp_path, "wallet", "refund", "req_bad", "--reason", "the provider answered garbage")
    assert first.stdout.strip() == "refunded: 0.25 USD to acme for req_bad; balance 1 USD", first
    again = meterway(tmp_path, "wallet", "refund", "req_bad", "--reason", "the provider answered garbage")
    assert again.stdout.strip() == "already refunded: 0.25 USD to acme for req_bad; balance 1 USD", again
    assert "refund\t+0.25\trefund:req_bad\tthe provider answered garbage" in meterway(
        tmp_path, "wallet", "transactions", "acme").stdout
    unknown = meterway(tmp_path, "wallet", "refund", "req_none", "--reason", "x")
    assert unknown.returncode == 1 and "no settled request" in unknown.stderr
