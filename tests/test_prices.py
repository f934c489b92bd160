"""The versioned price catalogue: the ledger's versions, a request priced by the version in force when it started,
and `meterway prices import|list`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from config.pricing import ModelPrice
from gateway.money.prices import PriceBook
from ledger.money import parse_usd
from ledger.prices import CONFIG_VERSION, PriceConflict, PriceVersion
from ledger.store import LedgerStore
from ledger.times import utc_text
from tests.test_multiprocess import write_config

T0 = datetime(2026, 12, 1, tzinfo=UTC)


def version(model: str, at: datetime, per_call_usd: str) -> PriceVersion:
    return PriceVersion(model, utc_text(at), 0, 0, 0, parse_usd(per_call_usd))


async def test_versions_are_added_once_and_never_changed(book: LedgerStore) -> None:
    first, second = version("flat-fee", T0, "0.02"), version("flat-fee", T0 + timedelta(days=30), "0.03")
    assert await book.add_price_versions([second, first]) == 2
    assert await book.add_price_versions([first]) == 0  # the same again: nothing new
    with pytest.raises(PriceConflict):
        await book.add_price_versions([version("flat-fee", T0, "0.05"), version("other", T0, "1")])
    assert [v.version for v in await book.price_versions()] == [first.version, second.version]  # nothing half-added


def test_the_version_in_force_changes_exactly_at_its_effective_time() -> None:
    prices = PriceBook({"flat-fee": ModelPrice(0, 0, 0, parse_usd("0.01"))})
    prices.load([version("flat-fee", T0, "0.02"), version("flat-fee", T0 + timedelta(days=1), "0.03")])
    at = T0.timestamp()
    assert prices.at("flat-fee", at - 0.001).version == CONFIG_VERSION  # before any version: the config's
    assert prices.at("flat-fee", at).price.per_call_nusd == parse_usd("0.02")
    assert prices.at("flat-fee", at + 86_400 - 0.001).price.per_call_nusd == parse_usd("0.02")
    assert prices.at("flat-fee", at + 86_400).version == f"flat-fee@{utc_text(T0 + timedelta(days=1))}"


async def test_a_request_pays_the_version_in_force_when_it_started(gw) -> None:
    wallet_id, secret = await gw.funded_key("1")
    now = datetime.now(UTC)
    current, coming = version("flat-fee", now - timedelta(hours=1), "0.02"), version("flat-fee", now + timedelta(seconds=0.6), "0.05")
    await gw.state.book.add_price_versions([current, coming])
    await gw.state.proxy._prices.refresh(gw.state.book)
    slow = asyncio.ensure_future(gw.client(secret).chat.completions.with_raw_response.create(
        model="flat-fee", messages=[{"role": "user", "content": "FAKE:latency_ms=1200"}]))
    await asyncio.sleep(0.9)  # the new version is in force now; the slow request started before it
    later = await gw.client(secret).chat.completions.with_raw_response.create(
        model="flat-fee", messages=[{"role": "user", "content": "hi"}])
    started_before = await slow
    assert started_before.headers["x-usage-cost"] == "0.02" and later.headers["x-usage-cost"] == "0.05"
    usage = await gw.usage(started_before.headers["x-request-id"], secret)
    assert usage["cost"] == "0.02"
    rows = {r.request_id: r for r in [(await gw.state.book.usage(started_before.headers["x-request-id"])).record,
                                      (await gw.state.book.usage(later.headers["x-request-id"])).record]}
    assert {r.price_version for r in rows.values()} == {current.version, coming.version}
    await gw.settled_everything()
    assert await gw.balance(wallet_id) == parse_usd("1") - parse_usd("0.07")


def meterway(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line, embedded, with the test models configured (gpt-4o-mini among them)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["MW_SQLITE_PATH"] = str(tmp_path / "cli.sqlite3")
    config = write_config(tmp_path, "http://127.0.0.1:9/v1")
    command, *rest = args
    if command == "prices":
        rest = [rest[0], "--config", str(config), *rest[1:]]
    return subprocess.run([sys.executable, "-m", "gateway.cli", command, *rest], env=env, capture_output=True,
                          text=True, timeout=60)


def test_prices_are_shown_before_they_are_imported_and_listed_after(tmp_path: Path) -> None:
    assert meterway(tmp_path, "migrate").returncode == 0
    prices = tmp_path / "prices.toml"
    prices.write_text('[[prices]]\nmodel = "gpt-4o-mini"\neffective_at = "2026-01-01T00:00:00Z"\n'
                      'input_per_1m = "0.20"\noutput_per_1m = "0.80"\n\n'
                      '[[prices]]\nmodel = "gpt-4o-mini"\neffective_at = "2099-01-01T00:00:00Z"\n'
                      'input_per_1m = "0.10"\ncached_input_per_1m = "0.05"\noutput_per_1m = "0.40"\n')
    shown = meterway(tmp_path, "prices", "import", str(prices))
    assert shown.returncode == 0 and "2 new, 0 unchanged, 0 refused" in shown.stdout and "--yes" in shown.stdout
    assert "gpt-4o-mini@" not in meterway(tmp_path, "prices", "list").stdout  # nothing applied
    applied = meterway(tmp_path, "prices", "import", str(prices), "--yes")
    assert applied.returncode == 0 and "applied: 2 new" in applied.stdout
    listed = meterway(tmp_path, "prices", "list").stdout
    assert "gpt-4o-mini@2026-01-01T00:00:00.000Z" in listed and "then" in listed and "input 0.2" in listed
    future = meterway(tmp_path, "prices", "list", "--at", "2099-06-01T00:00:00Z").stdout
    assert "gpt-4o-mini@2099-01-01T00:00:00.000Z" in future
    again = meterway(tmp_path, "prices", "import", str(prices), "--yes")
    assert "0 new, 2 unchanged" in again.stdout
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({"prices": [{"model": "gpt-4o-mini", "effective_at": "2026-01-01T00:00:00Z",
                                               "input_per_1m": "9"}]}))
    refused = meterway(tmp_path, "prices", "import", str(changed), "--yes")
    assert refused.returncode == 1 and "refused" in refused.stdout


@pytest.mark.parametrize("body, message", [
    ('[[prices]]\nmodel = "nope"\neffective_at = "2026-01-01T00:00:00Z"\ninput_per_1m = "1"\n', "not served"),
    ('[[prices]]\nmodel = "gpt-4o-mini"\neffective_at = "2026-01-01T00:00:00"\ninput_per_1m = "1"\n', "timezone"),
    ('[[prices]]\nmodel = "gpt-4o-mini"\neffective_at = "2026-01-01T00:00:00Z"\ninput_per_1m = "-1"\n', "input_per_1m"),
    ('[[prices]]\nmodel = "gpt-4o-mini"\neffective_at = "2026-01-01T00:00:00Z"\n', "input_per_1m"),
])
def test_a_bad_price_file_is_a_clear_message(tmp_path: Path, body: str, message: str) -> None:
    meterway(tmp_path, "migrate")
    bad = tmp_path / "bad.toml"
    bad.write_text(body)
    result = meterway(tmp_path, "prices", "import", str(bad))
    assert result.returncode != 0 and message in result.stderr, result
