"""Bots, key spend limits and cap rows: one contract for SQLite and Postgres."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from ledger.api_keys import ApiKeyRecord, BotRule, SpendLimits
from ledger.book import SettleOutcome
from ledger.bots import Bot
from ledger.caps import UNLIMITED_NUSD, CapScope, Window, cap_spec, subject_prefix
from ledger.errors import BotExists, BotInUse, UnknownAccount
from ledger.store import LedgerStore
from tests.test_ledger_contract import deposit, usage

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def bot(bot_id: str = "b1", name: str = "support", **caps: int | None) -> Bot:
    return Bot(bot_id, "acme", name, SpendLimits(**caps), "Sorry, I am out of budget today.")


async def funded(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.transfer(deposit("d1", "acme", 1_000_000))


def key(key_id: str, bot_id: str | None = None, limits: SpendLimits | None = None) -> ApiKeyRecord:
    rule = None if bot_id is None else BotRule(bot_id, SpendLimits())
    return ApiKeyRecord(key_id, f"h-{key_id}", "mw-x", "acme", None, "support", limits=limits, bot_rule=rule)


async def test_bots_are_made_listed_changed_and_deleted(book: LedgerStore) -> None:
    await funded(book)
    made = await book.create_bot(bot(day_nusd=500, conversation_nusd=50))
    assert made.caps == SpendLimits(day_nusd=500, conversation_nusd=50) and made.created_at
    with pytest.raises(BotExists):
        await book.create_bot(bot("b2"))
    with pytest.raises(UnknownAccount):
        await book.create_bot(dataclasses.replace(bot("b3", "other"), wallet_id="ghost"))
    await book.create_bot(bot("b2", "reviewer"))
    assert [b.name for b in await book.list_bots("acme")] == ["support", "reviewer"]
    changed = await book.update_bot("b1", SpendLimits(month_nusd=9), None)
    assert changed is not None and changed.caps == SpendLimits(month_nusd=9) and changed.friendly_message is None
    assert await book.update_bot("ghost", SpendLimits(), None) is None
    await book.create_key(key("k1", "b1"))
    with pytest.raises(BotInUse):
        await book.delete_bot("b1")
    await book.revoke_key("k1")
    assert await book.delete_bot("b1") is True and await book.delete_bot("b1") is False
    assert await book.bot("b1") is None
    await book.create_bot(bot("b4"))  # the name is free again


async def test_a_key_reads_its_bot_and_its_own_limits(book: LedgerStore) -> None:
    await funded(book)
    await book.create_bot(bot(day_nusd=500, month_nusd=5_000, conversation_nusd=50))
    await book.create_key(key("k1", "b1", SpendLimits(total_nusd=10, day_nusd=2)))
    found = await book.key_by_hash("h-k1")
    assert found is not None and found.bot_id == "b1" and found.limits == SpendLimits(total_nusd=10, day_nusd=2)
    assert found.bot_rule == BotRule("b1", SpendLimits(day_nusd=500, month_nusd=5_000, conversation_nusd=50),
                                     "Sorry, I am out of budget today.")
    with pytest.raises(UnknownAccount):  # a bot of another wallet, or none
        await book.create_key(key("k2", "ghost"))
    changed = await book.set_key_limits("k1", SpendLimits(month_nusd=7))
    assert changed is not None and changed.limits == SpendLimits(month_nusd=7) and changed.bot_id == "b1"
    assert await book.set_key_limits("ghost", SpendLimits()) is None
    assert [k.bot_id for k in await book.list_keys("acme")] == ["b1"]


async def test_a_cap_opens_from_the_usage_of_its_window(book: LedgerStore) -> None:
    await funded(book)
    await book.create_bot(bot(day_nusd=1_000, conversation_nusd=30))
    await book.create_key(key("k1", "b1", SpendLimits(total_nusd=150)))
    await book.settle_batch([dataclasses.replace(usage("r0", "acme", 100), key_id="k1")])
    day = cap_spec(CapScope.BOT, "b1", Window.DAY, 1_000, datetime.now(UTC))
    opened = await book.open_cap(day)
    assert opened.cap_id == day.cap_id and opened.remaining_nusd == 900
    assert await book.open_cap(day) == opened  # opened once
    tomorrow = cap_spec(CapScope.BOT, "b1", Window.DAY, 1_000, datetime.now(UTC) + timedelta(days=1))
    assert (await book.open_cap(tomorrow)).remaining_nusd == 1_000  # a new window starts empty
    total = await book.open_cap(cap_spec(CapScope.KEY, "k1", Window.TOTAL, 150, NOW))
    assert total.remaining_nusd == 50
    # The limit is read where it is kept, not from the (maybe cached) spec; none there: unlimited.
    stale = await book.open_cap(cap_spec(CapScope.KEY, "k1", Window.DAY, 5, NOW))
    assert stale.remaining_nusd == UNLIMITED_NUSD
    conversation = cap_spec(CapScope.CONVERSATION, "b1", Window.CONVERSATION, 30, NOW, "conv-1")
    assert (await book.open_cap(conversation)).remaining_nusd == 30
    # A conversation's row opens from the usage rows that named it, like every window's.
    await book.settle_batch([dataclasses.replace(usage("r-c2", "acme", 12), key_id="k1", conversation_id="conv-2")])
    other = await book.open_cap(cap_spec(CapScope.CONVERSATION, "b1", Window.CONVERSATION, 30, NOW, "conv-2"))
    assert other.remaining_nusd == 18
    # Settling moves every cap it was held against, in the debit's transaction.
    item = dataclasses.replace(usage("r1", "acme", 20), key_id="k1", caps=(day.cap_id, conversation.cap_id))
    [result] = await book.settle_batch([item])
    assert result.outcome is SettleOutcome.SETTLED
    assert {c.cap_id: c.remaining_nusd for c in result.caps} == {day.cap_id: 880, conversation.cap_id: 10}


async def test_a_new_limit_rewrites_the_open_rows(book: LedgerStore) -> None:
    await funded(book)
    await book.create_bot(bot(day_nusd=1_000, conversation_nusd=30))
    await book.create_key(key("k1", "b1", SpendLimits(total_nusd=100)))
    day = await book.open_cap(cap_spec(CapScope.BOT, "b1", Window.DAY, 1_000, NOW))
    conv = await book.open_cap(cap_spec(CapScope.CONVERSATION, "b1", Window.CONVERSATION, 30, NOW, "c1"))
    changed = await book.relimit_caps(subject_prefix(CapScope.BOT, "b1"), {"d": 400, "c": None})
    moved = {c.cap_id: c for c in changed}
    assert moved[day.cap_id].remaining_nusd == 400 and moved[day.cap_id].version > day.version
    assert moved[conv.cap_id].remaining_nusd == UNLIMITED_NUSD
    assert await book.relimit_caps(subject_prefix(CapScope.BOT, "b1"), {"d": 400}) == []  # unchanged: untouched
    # A limit given again after a time without one counts the usage again, with a newer version.
    await book.settle_batch([dataclasses.replace(usage("r1", "acme", 70), key_id="k1")])
    again = await book.open_cap(cap_spec(CapScope.CONVERSATION, "b1", Window.CONVERSATION, 30, NOW, "c1"))
    assert again.remaining_nusd == 30 and again.version > moved[conv.cap_id].version
    key_total = await book.open_cap(cap_spec(CapScope.KEY, "k1", Window.TOTAL, 100, NOW))
    await book.relimit_caps(subject_prefix(CapScope.KEY, "k1"), {"total": None})
    reopened = await book.open_cap(cap_spec(CapScope.KEY, "k1", Window.TOTAL, 100, NOW))
    assert key_total.remaining_nusd == 30 and reopened.remaining_nusd == 30 and reopened.version > key_total.version


