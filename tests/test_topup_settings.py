"""[stripe] and [topup] settings, and the tiers' arithmetic (payments/tiers.py).

Stripe's secrets come from the environment only: missing or empty with
Stripe on stops the gateway with a message naming the variable, and a secret
written in the config file is refused without being repeated.
"""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.payments import NUSD_PER_CENT, TopupSettings
from config.settings import ConfigError, load_settings
from ledger.money import parse_usd
from payments.tiers import Quote, QuoteError, quote

SECRET = "sk_test_do_not_print_me_0123456789"


def write(tmp_path: Path, stripe: str) -> Path:
    path = tmp_path / "meterway.toml"
    path.write_text(f"[stripe]\n{stripe}\n")
    return path


@pytest.mark.parametrize("env, missing", [({}, "STRIPE_SECRET_KEY"),
                                          ({"STRIPE_SECRET_KEY": SECRET}, "STRIPE_WEBHOOK_SECRET"),
                                          ({"STRIPE_SECRET_KEY": " ", "STRIPE_WEBHOOK_SECRET": "whsec_x1234567"},
                                           "STRIPE_SECRET_KEY is empty")])
def test_stripe_on_without_its_secrets_is_refused(tmp_path, monkeypatch, env, missing) -> None:
    for name in ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, "enabled = true"))
    assert missing in str(refused.value)


def test_a_secret_in_the_file_is_refused_without_repeating_it(tmp_path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(write(tmp_path, f'enabled = true\nsecret_key = "{SECRET}"'))
    assert "STRIPE_SECRET_KEY" in str(refused.value) and SECRET not in str(refused.value)


def test_meterway_serve_stops_with_the_missing_variable_named(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPE_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["MW_SQLITE_PATH"] = str(tmp_path / "cli.sqlite3")
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(write(tmp_path, "enabled = true"))],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "STRIPE_SECRET_KEY" in done.stderr and "Traceback" not in done.stderr, done


def test_secrets_from_the_environment_and_origins_normalised(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("STRIPE_SECRET_KEY", SECRET)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_abcdefgh12345678")
    settings = load_settings(write(tmp_path, 'enabled = true\nallowed_origins = ["https://App.Example.com/"]'))
    assert settings.stripe.secret_key is not None and settings.stripe.secret_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings.stripe) and settings.stripe.allowed_origins == ("https://app.example.com",)
    with pytest.raises(ConfigError):
        load_settings(write(tmp_path, 'allowed_origins = ["https://app.example.com/pay"]'))


def test_aisa_tiers_by_default_and_their_quotes() -> None:
    topup = TopupSettings()
    assert [(t.id, t.discount_percent) for t in topup.tiers] == [
        ("50", 5), ("100", 5), ("200", 10), ("500", 15), ("1000", 20)]
    found = quote(topup, tier_id="1000")
    assert isinstance(found, Quote) and (found.payable_nusd, found.discount_nusd) == (parse_usd("800"), parse_usd("200"))
    custom = quote(topup, parse_usd("75"))  # reaches the $50 tier: 5 %
    assert isinstance(custom, Quote) and custom.tier_id == "50" and custom.payable_nusd == parse_usd("71.25")
    small = quote(topup, parse_usd("5"))
    assert isinstance(small, Quote) and small.discount_nusd == 0 and small.tier_id is None
    plain = quote(TopupSettings(custom_amounts_earn_tiers=False), parse_usd("75"))
    assert isinstance(plain, Quote) and plain.discount_nusd == 0
    aerostack = TopupSettings(max_usd="500")
    refused = quote(aerostack, parse_usd("500.01"))
    assert isinstance(refused, QuoteError) and refused.code == "amount_out_of_range"


@pytest.mark.parametrize("fields", [{"min_usd": "0"}, {"min_usd": "10", "max_usd": "5"}, {"min_usd": "5.001"},
                                    {"tiers": [{"id": "a", "amount_usd": "10", "discount_percent": "100"}]},
                                    {"tiers": [{"id": "a", "amount_usd": "10", "discount_percent": "5"},
                                               {"id": "a", "amount_usd": "20", "discount_percent": "5"}]}])
def test_inconsistent_topup_settings_are_refused(fields) -> None:
    with pytest.raises(ValueError):
        TopupSettings(**fields)


@given(cents=st.integers(500, 100_000))
def test_a_quote_is_whole_cents_and_adds_up(cents: int) -> None:
    topup = TopupSettings()
    found = quote(topup, cents * NUSD_PER_CENT)
    assert isinstance(found, Quote)
    assert found.payable_nusd + found.discount_nusd == found.amount_nusd == cents * NUSD_PER_CENT
    assert found.payable_cents * NUSD_PER_CENT == found.payable_nusd
    assert found.discount_nusd <= found.amount_nusd * Decimal("0.20")
    bigger = quote(topup, (cents + 1) * NUSD_PER_CENT) if cents < 100_000 else found
    assert isinstance(bigger, Quote) and bigger.discount_percent >= found.discount_percent  # more never earns less
