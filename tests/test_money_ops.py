"""Operator money operations: validated before anything is written, and once
committed, reported as done (issue 6, item 6).

Credits and keys go to wallets only, never to a system account, through the
operations layer, the CLI and the admin API, and the ledger refuses such a
credit on its own too. A credit committed while Redis is down is reported as
done, and the CLI shows the transfer id it made up so a retry adds nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import cli
from gateway.money.operations import Operations
from ledger.book import (
    FUNDING_ACCOUNT,
    REVENUE_ACCOUNT,
    SHORTFALL_ACCOUNT,
    SYSTEM_ACCOUNTS,
    ApiKeyRecord,
    Book,
    LedgerTotals,
    Transfer,
    TransferKind,
    check_invariants,
)
from ledger.errors import NotAWallet, UnknownAccount
from ledger.inprocess_holds import InProcessHolds
from ledger.money import parse_usd
from ledger.postgres_book import PostgresBook
from tests.conftest import pg_schema
from tests.gateway_harness import ADMIN_TOKEN

ONE_USD = parse_usd("1")


async def _unchanged(book: Book, before: LedgerTotals) -> None:
    after = await book.totals()
    check_invariants(after)
    assert after == before, "a refused operation must write nothing"


@pytest.mark.parametrize("account", SYSTEM_ACCOUNTS)
async def test_operations_refuse_system_accounts_as_credit_and_key_targets(book: Book, account: str) -> None:
    ops = Operations(book, InProcessHolds())
    await ops.create_wallet("acme")
    await ops.credit("acme", ONE_USD, "seed")
    before = await book.totals()
    with pytest.raises(NotAWallet, match="system account"):
        await ops.credit(account, ONE_USD, "to-system")
    with pytest.raises(NotAWallet, match="system account"):
        await ops.credit(account, ONE_USD)  # with a generated id too
    with pytest.raises(NotAWallet):
        await ops.create_key(account, "k")
    await _unchanged(book, before)
    assert await book.list_keys() == []
    assert [t.transfer.transfer_id for t in await book.transfers_of(account)] in ([], ["seed"])


async def test_the_ledger_refuses_a_credit_into_a_system_account(book: Book) -> None:
    """The defence under the operations layer: checked in the transfer's own transaction."""
    await book.create_wallet("w")
    before = await book.totals()
    for kind in (TransferKind.ADJUSTMENT, TransferKind.DEPOSIT):
        for target in (REVENUE_ACCOUNT, SHORTFALL_ACCOUNT):
            with pytest.raises(NotAWallet):
                await book.transfer(Transfer(f"t-{kind.value}-{target}", FUNDING_ACCOUNT, target, ONE_USD, kind))
    await _unchanged(book, before)
    # A key on a system account is refused by both books as well.
    with pytest.raises(UnknownAccount):
        await book.create_key(ApiKeyRecord("key_sys", "s" * 64, "mw-sys", REVENUE_ACCOUNT, None, None))
    assert await book.list_keys() == []
    # What stays allowed: money from funding into a wallet, and an operator's debit back to funding.
    await book.transfer(Transfer("in", FUNDING_ACCOUNT, "w", ONE_USD, TransferKind.DEPOSIT))
    await book.transfer(Transfer("back", "w", FUNDING_ACCOUNT, ONE_USD // 4, TransferKind.ADJUSTMENT))
    wallet = await book.wallet("w")
    assert wallet is not None and wallet.balance_nusd == ONE_USD - ONE_USD // 4
    check_invariants(await book.totals())


# --- the CLI, run in-process (main() runs its own event loop: on a thread) ----


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _config(tmp_path: Path, **fields: str) -> str:
    path = tmp_path / "cli.toml"
    path.write_text("".join(f'{name} = "{value}"\n' for name, value in fields.items()))
    return str(path)


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "MW_CONFIG", "MW_SQLITE_PATH", "MW_DATABASE_URL", "MW_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


async def _cli(capsys: pytest.CaptureFixture[str], config: str, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["--config", config, *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(params=["embedded", "production-redis-down"])
async def cli_config(request: pytest.FixtureRequest, tmp_path: Path, cli_env: None) -> Any:
    if request.param == "embedded":
        yield _config(tmp_path, sqlite_path=str(tmp_path / "cli.sqlite3"))
        return
    async with pg_schema() as pg_dsn:
        yield await _production_config(tmp_path, pg_dsn)


async def _production_config(tmp_path: Path, pg_dsn: str) -> str:
    """Postgres, migrated, with a Redis URL on which nothing listens (Redis down)."""
    config = _config(tmp_path, database_url=pg_dsn, redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    assert await asyncio.to_thread(cli.main, ["--config", config, "migrate"]) == 0
    return config


async def _book_of(config: str) -> Book:
    from config.settings import load_settings
    from gateway.money.stores import open_book

    return await open_book(load_settings(config))


@pytest.mark.parametrize("account", SYSTEM_ACCOUNTS)
async def test_cli_credit_or_key_on_a_system_account_is_refused(capsys, cli_config: str, account: str) -> None:
    code, _, err = await _cli(capsys, cli_config, "wallet", "create", "acme")
    assert code == 0, err
    book = await _book_of(cli_config)
    try:
        before = await book.totals()
        code, out, err = await _cli(capsys, cli_config, "wallet", "credit", account, "1")
        assert code == 1 and "system account" in err and "Traceback" not in err, (out, err)
        code, out, err = await _cli(capsys, cli_config, "keys", "create", "--wallet", account)
        assert code == 1 and "system account" in err and "key:" not in out, (out, err)
        await _unchanged(book, before)
        assert await book.list_keys() == []
    finally:
        await book.close()


def _credit_id_hint(out: str) -> str:
    [hint] = [line for line in out.splitlines() if line.startswith("transfer id: ")]
    transfer_id = hint.removeprefix("transfer id: ").split(";")[0]
    assert transfer_id.startswith("adj_") and f"re-run with --id {transfer_id}" in hint, hint
    return transfer_id


async def test_cli_credit_committed_while_redis_is_down_is_done_and_its_retry_adds_nothing(
        book: Book, capsys, caplog) -> None:
    """Redis goes away between the commit and the mirror update: the credit is done, once."""
    import redis.asyncio as aioredis

    from ledger.redis_holds import RedisHolds

    client = aioredis.from_url(f"redis://127.0.0.1:{_closed_port()}/0", socket_connect_timeout=1)
    ops = Operations(book, RedisHolds(client, prefix="mwt-down", close_client=True, timeout_s=1))
    try:
        await book.create_wallet("acme")
        args = argparse.Namespace(wallet_id="acme", amount="2.5", transfer_id=None, memo=None)
        capsys.readouterr()
        with caplog.at_level(logging.WARNING, logger="meterway.operations"):
            assert await cli.wallet_credit(ops, None, args) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[0] == "created: acme balance 2.5 USD", out
        assert any("committed" in r.getMessage() and "catch up" in r.getMessage() for r in caplog.records), caplog.text
        transfer_id = _credit_id_hint(out)  # no --id given: the CLI made one and shows it
        retry = argparse.Namespace(wallet_id="acme", amount="2.5", transfer_id=transfer_id, memo=None)
        assert await cli.wallet_credit(ops, None, retry) == 0
        assert capsys.readouterr().out.splitlines() == ["exists: acme balance 2.5 USD"]
        wallet = await book.wallet("acme")
        assert wallet is not None and wallet.balance_nusd == parse_usd("2.5"), "credited once"
        check_invariants(await book.totals())
    finally:
        await ops.holds.close()


async def test_cli_credit_with_redis_down_is_done_and_its_retry_adds_nothing(
        capsys, caplog, tmp_path: Path, cli_env: None, pg_dsn: str) -> None:
    """`meterway wallet credit` end to end on Postgres with Redis down: the ledger is the
    truth and the mirror heals itself, so the credit is done (exit 0, no traceback)."""
    config = await _production_config(tmp_path, pg_dsn)
    assert (await _cli(capsys, config, "wallet", "create", "acme"))[0] == 0
    with caplog.at_level(logging.WARNING, logger="meterway.operations"):
        code, out, err = await _cli(capsys, config, "wallet", "credit", "acme", "2.5")
    assert code == 0 and "Traceback" not in err, (code, out, err)
    assert out.splitlines()[0] == "created: acme balance 2.5 USD", out
    said = caplog.text + err
    assert "committed" in said and "catch up" in said, said
    transfer_id = _credit_id_hint(out)
    code, out, err = await _cli(capsys, config, "wallet", "credit", "acme", "2.5", "--id", transfer_id)
    assert code == 0 and out.splitlines() == ["exists: acme balance 2.5 USD"], (code, out, err)
    book = await PostgresBook.connect(pg_dsn)
    try:
        wallet = await book.wallet("acme")
        assert wallet is not None and wallet.balance_nusd == parse_usd("2.5"), "credited once"
        check_invariants(await book.totals())
    finally:
        await book.close()


# --- the admin API ------------------------------------------------------------


async def _admin(gw: Any, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.request(method, f"{gw.base_url}{path}", json=body,
                                   headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as response:
            return response.status, await response.json(content_type=None)


@pytest.mark.parametrize("account", SYSTEM_ACCOUNTS)
async def test_admin_credit_or_key_on_a_system_account_is_a_4xx_and_writes_nothing(gw: Any, account: str) -> None:
    await gw.funded_key("1")
    before = await gw.state.book.totals()
    for body in ({"amount": "1.00", "transfer_id": "to-system"}, {"amount": "1.00"}):
        status, answer = await _admin(gw, "POST", f"/admin/wallets/{account}/credits", body)
        assert 400 <= status < 500 and set(answer["error"]) >= {"message", "type", "param", "code"}, answer
    status, answer = await _admin(gw, "POST", "/admin/keys", {"wallet": account, "name": "x"})
    assert 400 <= status < 500 and "error" in answer, answer
    await _unchanged(gw.state.book, before)
    assert all(k.wallet_id not in SYSTEM_ACCOUNTS for k in await gw.state.book.list_keys())


async def test_admin_credit_answers_the_transfer_id_it_used(gw: Any) -> None:
    wallet_id, _ = await gw.funded_key("0")
    status, first = await _admin(gw, "POST", f"/admin/wallets/{wallet_id}/credits", {"amount": "3"})
    assert status == 201 and first["outcome"] == "created" and first["transfer_id"].startswith("adj_"), first
    status, again = await _admin(gw, "POST", f"/admin/wallets/{wallet_id}/credits",
                                 {"amount": "3", "transfer_id": first["transfer_id"]})
    assert status == 200 and again["outcome"] == "exists" and again["transfer_id"] == first["transfer_id"], again
    assert await gw.balance(wallet_id) == parse_usd("3"), "a retry with the answered id adds nothing"
    status, named = await _admin(gw, "POST", f"/admin/wallets/{wallet_id}/credits",
                                 {"amount": "1", "transfer_id": "invoice-9"})
    assert status == 201 and named["transfer_id"] == "invoice-9", named
