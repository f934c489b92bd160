"""BYOK's pure parts: the sealing box, the fee's rounding, which stored key a call takes, log redaction."""

from __future__ import annotations

import base64
import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from config.byok import ByokSettings
from gateway.logs import RedactSecrets
from gateway.metering.metering import Estimate
from gateway.money.byok import fee_estimate
from gateway.money.calls import byok_fee_nusd
from gateway.money.provider_keys import OpenedKey, StoredKeys, choose, last4, open_record, sealed_record
from gateway.money.secrets_box import BoxUnavailable, SecretsBox, Unreadable, parse_master_key, secrets_box
from ledger.errors import LedgerUnavailable
from ledger.money import AMOUNT_NUSD_MAX
from ledger.provider_keys import ProviderKeyRecord

KEY = "sk-proj-" + "a1B2c3D4" * 6


def box(*old: bytes) -> SecretsBox:
    return SecretsBox(os.urandom(32), old)


def test_a_sealed_key_opens_only_with_its_master_key_and_its_own_row() -> None:
    current = box()
    sealed = current.seal(KEY, "pk_1\0w1\0\0openai")
    assert KEY not in sealed and sealed.startswith(f"mwk1.{current.key_id}.")
    assert current.open(sealed, "pk_1\0w1\0\0openai") == KEY
    assert current.seal(KEY, "ctx") != current.seal(KEY, "ctx")  # a fresh nonce each time
    assert isinstance(current.open(sealed, "pk_1\0w2\0\0openai"), Unreadable)  # another wallet's row
    assert isinstance(box().open(sealed, "pk_1\0w1\0\0openai"), Unreadable)  # another master key
    damaged = sealed[:-6] + ("A" if sealed[-6] != "A" else "B") + sealed[-5:]
    for bad in (damaged, "mwk1.zz", "plain text", sealed.replace("mwk1", "mwk2"), "mwk1.00000000.!!!"):
        assert isinstance(current.open(bad, "pk_1\0w1\0\0openai"), Unreadable), bad


def test_rotation_seals_with_the_new_key_and_opens_with_the_old() -> None:
    old_key = os.urandom(32)
    old = SecretsBox(old_key)
    sealed = old.seal(KEY, "ctx")
    rotated = SecretsBox(os.urandom(32), [old_key])
    assert rotated.open(sealed, "ctx") == KEY
    assert rotated.seal(KEY, "ctx").split(".")[1] == rotated.key_id != old.key_id


def test_master_key_forms_and_failures_never_quote_it(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    for text in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex()):
        assert parse_master_key(text, "MW_MASTER_KEY") == raw
    for text, says in ((None, "not set"), ("  ", "not set"), ("%%%%", "not base64"),
                       (base64.b64encode(raw[:31]).decode(), "31 bytes")):
        failed = parse_master_key(text, "MW_MASTER_KEY")
        assert isinstance(failed, BoxUnavailable) and says in failed.reason, failed
        assert text is None or not text.strip() or text not in failed.reason
    monkeypatch.setenv("MW_MASTER_KEY", base64.b64encode(raw).decode())
    monkeypatch.setenv("MW_MASTER_KEY_OLD", "not a key")
    failed = secrets_box(ByokSettings())
    assert isinstance(failed, BoxUnavailable) and "MW_MASTER_KEY_OLD" in failed.reason
    monkeypatch.delenv("MW_MASTER_KEY_OLD")
    assert isinstance(secrets_box(ByokSettings()), SecretsBox)


def test_the_master_key_is_never_read_from_the_config_file() -> None:
    with pytest.raises(ValueError, match="environment variable MW_MASTER_KEY"):
        ByokSettings.model_validate({"master_key": "x" * 44})


@given(st.integers(0, AMOUNT_NUSD_MAX), st.integers(0, 10_000))
def test_the_fee_is_its_share_rounded_up_by_less_than_one_nusd(cost: int, bps: int) -> None:
    fee = byok_fee_nusd(cost, bps)
    assert fee * 10_000 >= cost * bps > (fee - 1) * 10_000 or fee == cost * bps == 0
    assert 0 <= fee <= cost


def test_the_fees_estimate_bounds_the_fee_of_any_cost_within_the_calls() -> None:
    estimate = Estimate(1_000_001, lambda: 10, lambda: 500_001)
    fee = fee_estimate(estimate, 500)
    assert (fee.most_nusd, fee.least(), fee.tighten()) == (50_001, 1, 25_001)
    assert fee_estimate(estimate, 0).most_nusd == 0  # no fee: a free call, nothing held


def test_a_bots_own_key_wins_over_the_wallets_for_its_provider() -> None:
    keys = (OpenedKey("k1", None, "openai", "wallet-openai"), OpenedKey("k2", "bot_a", "openai", "bot-openai"),
            OpenedKey("k3", None, "groq", "wallet-groq"))
    assert choose(keys, None, "openai").key_id == "k1"  # type: ignore[union-attr]
    assert choose(keys, "bot_a", "openai").key_id == "k2"  # type: ignore[union-attr]
    assert choose(keys, "bot_b", "openai").key_id == "k1"  # type: ignore[union-attr]
    assert choose(keys, "bot_a", "groq").key_id == "k3"  # type: ignore[union-attr]
    assert choose(keys, None, "mistral") is None
    assert "wallet-openai" not in repr(keys)


def test_a_stored_record_holds_the_hint_only_and_opens_back() -> None:
    current = box()
    record = sealed_record(current, "w1", "bot_a", "openai", KEY)
    assert (record.last4, record.bot_id, record.provider) == (KEY[-4:], "bot_a", "openai")
    assert KEY not in repr(record) and KEY not in record.sealed
    assert open_record(current, record).secret == KEY
    moved = ProviderKeyRecord(record.key_id, "w2", record.bot_id, record.provider, record.sealed, record.last4)
    assert isinstance(open_record(current, moved).secret, Unreadable)  # copied onto another wallet: refused
    assert isinstance(open_record(BoxUnavailable("no key"), record).secret, Unreadable)
    assert last4("short") == ""  # a short key shows nothing of itself


class _Book:
    def __init__(self) -> None:
        self.records: list[ProviderKeyRecord] = []
        self.reads = 0
        self.down = False

    async def provider_keys(self, wallet_id: str) -> list[ProviderKeyRecord]:
        self.reads += 1
        if self.down:
            raise LedgerUnavailable("down")
        return [r for r in self.records if r.wallet_id == wallet_id]


async def test_the_cache_reads_a_wallet_once_per_ttl_and_keeps_its_keys_through_an_outage() -> None:
    book, current, now = _Book(), box(), [0.0]
    stored = StoredKeys(book, current, ttl_s=5, entries_max=2, clock=lambda: now[0])  # type: ignore[arg-type]
    assert not stored.known_none("w1")
    assert await stored.of("w1") == () and stored.known_none("w1")
    await stored.of("w1")
    assert book.reads == 1
    book.records.append(sealed_record(current, "w1", None, "openai", KEY))
    stored.forget("w1")  # a notice
    [key] = await stored.of("w1")
    assert key.secret == KEY and not stored.known_none("w1")
    now[0] = 10.0
    book.down = True
    assert (await stored.of("w1"))[0].secret == KEY  # stale, never "no key" during an outage
    with pytest.raises(LedgerUnavailable):
        await stored.of("w9")  # never read: the caller refuses the call (503)
    book.down = False
    await stored.of("w2")
    await stored.of("w3")  # over entries_max: the cache starts over rather than grow
    assert stored.known_none("w3") and not stored.known_none("w2")


def test_provider_keys_and_their_header_are_redacted_from_logs() -> None:
    redactor = RedactSecrets(["master-key-" + "m" * 32])
    lines = {
        f"headers: {{'X-Provider-Api-Key': '{KEY}'}}": KEY,
        "X-Provider-Api-Key: abcdef0123456789": "abcdef0123456789",
        '{"provider": "openai", "api_key": "zz-custom-provider-key-0000"}': "zz-custom-provider-key-0000",
        "anthropic sk-ant-api03-" + "x" * 40: "x" * 40,
        "openrouter sk-or-v1-" + "f" * 64: "f" * 64,
        "gemini AIza" + "S" * 35: "S" * 35,
        "groq gsk_" + "g" * 52: "g" * 52,
        "xai xai-" + "k" * 80: "k" * 80,
        "hf hf_" + "h" * 34: "h" * 34,
        "sealed mwk1.0a1b2c3d.QUJDREVGR0hJSktMTU5PUA==": "QUJDREVGR0hJSktMTU5PUA",
        "master master-key-" + "m" * 32: "m" * 32,
    }
    for line, secret in lines.items():
        record = logging.LogRecord("meterway", logging.WARNING, __file__, 1, "%s", (line,), None)
        redactor.filter(record)
        assert secret not in record.getMessage(), record.getMessage()
