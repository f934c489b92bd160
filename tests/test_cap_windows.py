"""A bot's daily and monthly caps reset at 00:00 UTC: below HTTP, with an injected clock, on every book and hold store.

The clock is far from today, so the usage rows the cap rows open from (their
real created_at) cannot fall in the windows under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.money.billing import Billing, Hold, Refusal, Refused
from gateway.money.caps import SpendCaps
from ledger.api_keys import ApiKeyRecord, BotRule, SpendLimits
from ledger.bots import Bot
from ledger.caps import Window
from ledger.holds import cap_account
from ledger.book import SettleResult
from tests.test_member_caps import money  # noqa: F401 (the fixture: both books, both hold stores)
from tests.test_money_properties import record

NIGHT = datetime(2031, 1, 30, 23, 59, 59, 999_000, tzinfo=UTC)  # the last instant of a day, a day before a month ends


async def test_daily_and_monthly_caps_reset_at_midnight_utc(money) -> None:
    billing, holds, ops = money
    book = ops.book
    await book.create_bot(Bot("b1", "w", "support", SpendLimits(day_nusd=1_000, month_nusd=1_500)))
    await book.create_key(ApiKeyRecord("kb", "h-kb", "mw-x", "w", None, "support", bot_rule=BotRule("b1", SpendLimits())))
    key = await book.key_by_hash("h-kb")
    now = [NIGHT]
    clocked = Billing(book, holds, billing.settler, 60.0, caps=SpendCaps(book, holds, clock=lambda: now[0]))

    async def spend(request_id: str, amount: int) -> Hold | Refused:
        held = await clocked.reserve("w", request_id, amount, clocked.caps.checks(key))
        if isinstance(held, Hold):
            async with held:
                assert isinstance(await held.charge(record(held, amount)), SettleResult)
        return held

    assert isinstance(await spend("r1", 600), Hold)
    day_refusal = await spend("r2", 600)
    assert isinstance(day_refusal, Refused) and day_refusal.reason is Refusal.BUDGET_EXCEEDED
    assert day_refusal.cap is not None and day_refusal.cap.window is Window.DAY
    assert (day_refusal.available_nusd, day_refusal.cap.until) == (400, NIGHT.replace(hour=0, minute=0, second=0,
                                                                                      microsecond=0) + timedelta(days=1))
    now[0] = NIGHT + timedelta(milliseconds=1)  # 2031-01-31T00:00:00Z: a new day, the same month
    assert isinstance(await spend("r3", 600), Hold)
    month_refusal = await spend("r4", 600)
    assert isinstance(month_refusal, Refused) and month_refusal.cap is not None
    assert month_refusal.cap.window is Window.MONTH and month_refusal.available_nusd == 300
    assert month_refusal.cap.until == datetime(2031, 2, 1, tzinfo=UTC)
    now[0] = datetime(2031, 2, 1, tzinfo=UTC)  # a new month (and day)
    assert isinstance(await spend("r5", 600), Hold)
    # Each window's row kept what was spent in it, and no hold is left anywhere.
    for cap_id, remaining in (("bot:b1:d:2031-01-30", 400), ("bot:b1:d:2031-01-31", 400), ("bot:b1:m:2031-01", 300),
                              ("bot:b1:d:2031-02-01", 400), ("bot:b1:m:2031-02", 900)):
        row = await book.spend_cap(cap_id)
        assert row is not None and row.remaining_nusd == remaining, (cap_id, row)
        mirror = await holds.wallet(cap_account("w", cap_id))
        assert mirror is not None and mirror.held_nusd == 0, (cap_id, mirror)
