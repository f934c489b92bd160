"""Provider keys (BYOK) and BYOK usage rows: one contract for SQLite and Postgres."""

from __future__ import annotations

import dataclasses

import pytest

from ledger.book import FEES_ACCOUNT, Payee, SettleOutcome, TransferKind, check_invariants
from ledger.errors import UnknownAccount
from ledger.provider_keys import ProviderKeyLimit, ProviderKeyRecord
from ledger.store import LedgerStore
from tests.test_ledger_contract import deposit, usage


def sealed_key(key_id: str, provider: str = "openai", bot_id: str | None = None,
               wallet_id: str = "acme") -> ProviderKeyRecord:
    return ProviderKeyRecord(key_id, wallet_id, bot_id, provider, f"mwk1.00000000.sealed-{key_id}", "wxyz")


async def test_keys_are_stored_listed_and_revoked(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    first = await book.store_provider_key(sealed_key("pk1"), keys_max=10)
    assert (first.key_id, first.bot_id, first.provider, first.last4, first.active) == ("pk1", None, "openai", "wxyz", True)
    assert first.created_at is not None and first.created_at.endswith("Z")
    await book.store_provider_key(sealed_key("pk2", bot_id="bot_1"), keys_max=10)
    await book.store_provider_key(sealed_key("pk3", provider="groq"), keys_max=10)
    assert [k.key_id for k in await book.provider_keys("acme")] == ["pk1", "pk2", "pk3"]
    assert await book.revoke_provider_key("acme", "pk2") is True
    assert await book.revoke_provider_key("acme", "pk2") is False  # already revoked
    assert await book.revoke_provider_key("other", "pk1") is False  # not that wallet's
    assert [k.key_id for k in await book.provider_keys("acme")] == ["pk1", "pk3"]
    assert await book.provider_keys("nobody") == []


async def test_a_new_key_for_the_same_bot_and_provider_replaces_the_live_one(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.store_provider_key(sealed_key("pk1"), keys_max=10)
    await book.store_provider_key(sealed_key("pk2", bot_id="bot_1"), keys_max=10)
    await book.store_provider_key(sealed_key("pk3"), keys_max=10)  # the wallet's openai key again
    await book.store_provider_key(sealed_key("pk4", bot_id="bot_1"), keys_max=10)
    live = {(k.bot_id, k.provider): k.key_id for k in await book.provider_keys("acme")}
    assert live == {(None, "openai"): "pk3", ("bot_1", "openai"): "pk4"}


async def test_a_wallet_holds_at_most_keys_max_live_keys(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.store_provider_key(sealed_key("pk1", provider="a"), keys_max=2)
    await book.store_provider_key(sealed_key("pk2", provider="b"), keys_max=2)
    with pytest.raises(ProviderKeyLimit):
        await book.store_provider_key(sealed_key("pk3", provider="c"), keys_max=2)
    # A replacement does not count twice; a revoked key frees its place.
    await book.store_provider_key(sealed_key("pk4", provider="b"), keys_max=2)
    assert await book.revoke_provider_key("acme", "pk1")
    await book.store_provider_key(sealed_key("pk5", provider="c"), keys_max=2)
    assert [k.key_id for k in await book.provider_keys("acme")] == ["pk4", "pk5"]


async def test_keys_belong_to_wallets_only(book: LedgerStore) -> None:
    with pytest.raises(UnknownAccount):
        await book.store_provider_key(sealed_key("pk1", wallet_id="nobody"), keys_max=10)
    with pytest.raises(UnknownAccount):
        await book.store_provider_key(sealed_key("pk1", wallet_id=FEES_ACCOUNT), keys_max=10)


async def test_a_byok_fee_is_its_own_leg_to_the_fees_account(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.transfer(deposit("d1", "acme", 1_000))
    provider_cost, fee = 20_000, 1_000  # 5%: the wallet pays the fee only, and it has no more
    item = dataclasses.replace(usage("r1", "acme", fee), provider_cost_nusd=provider_cost, byok=True,
                               payees=(Payee(FEES_ACCOUNT, fee),))
    [result] = await book.settle_batch([item])
    assert (result.outcome, result.charged_nusd, result.shortfall_nusd) == (SettleOutcome.SETTLED, fee, 0)
    settled = await book.usage("r1")
    assert settled is not None and settled.record == item
    assert (settled.record.byok, settled.record.provider_cost_nusd, settled.charged_nusd) == (True, provider_cost, fee)
    legs = [r.transfer for r in await book.transfers_of(FEES_ACCOUNT)]
    assert [(t.debit_account, t.amount_nusd, t.kind) for t in legs] == [("acme", fee, TransferKind.USAGE)]
    assert (await book.wallet("acme")).balance_nusd == 0  # type: ignore[union-attr]
    check_invariants(await book.totals())


async def test_a_free_byok_call_needs_no_money_and_moves_none(book: LedgerStore) -> None:
    await book.create_wallet("empty")
    item = dataclasses.replace(usage("r1", "empty", 0), provider_cost_nusd=7_500, byok=True)
    [result] = await book.settle_batch([item])
    assert (result.outcome, result.charged_nusd, result.shortfall_nusd) == (SettleOutcome.SETTLED, 0, 0)
    settled = await book.usage("r1")
    assert settled is not None and (settled.record.byok, settled.record.provider_cost_nusd) == (True, 7_500)
    assert await book.transfers_of("empty") == []
    check_invariants(await book.totals())


async def test_a_plain_row_keeps_its_provider_cost_and_an_old_journal_line_none(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.transfer(deposit("d1", "acme", 1_000))
    plain = dataclasses.replace(usage("r1", "acme", 300), provider_cost_nusd=300)
    old = usage("r2", "acme", 200)  # a journal line written before migration 0009
    await book.settle_batch([plain, old])
    first, second = await book.usage("r1"), await book.usage("r2")
    assert first is not None and (first.record.provider_cost_nusd, first.record.byok) == (300, False)
    assert second is not None and (second.record.provider_cost_nusd, second.record.byok) == (None, False)
