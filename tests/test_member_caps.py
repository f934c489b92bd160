"""A member's monthly spending limit, enforced with the hold like the wallet balance.

Below HTTP on every book and hold store (in-process and Redis), then through
two real `meterway serve` processes sharing Postgres and Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest
import redis.asyncio as aioredis

from gateway.money.billing import Billing, Hold, Refusal, Refused
from gateway.money.caps import SpendCaps, apply_member_limit, member_cap
from gateway.money.journal import Journal
from gateway.money.operations import Operations
from gateway.money.settlement import SettleLimits, Settler
from ledger.api_keys import ApiKeyRecord, BotRule, SpendLimits
from ledger.book import REVENUE_ACCOUNT, SettleResult, TransferOutcome, UsageRecord, check_invariants
from ledger.bots import Bot
from ledger.caps import UNLIMITED_NUSD, Window
from ledger.history import EntryQuery
from ledger.holds import HoldStore, cap_account
from ledger.inprocess_holds import InProcessHolds
from ledger.owners import ManagementKeyRecord, Member, MemberStatus, Role
from ledger.redis_holds import RedisHolds
from ledger.store import LedgerStore
from tests.test_ledger_contract import usage
from tests.test_money_properties import record
from tests.test_multiprocess import FLAT_FEE_NUSD, cluster, free_port, serve, stop, wait_healthy

LIMITS = SettleLimits(batch_max=8, queue_max=1000, retry_max=0, retry_delay_s=0)
LIMIT_NUSD = 1_000


async def add_org(book: LedgerStore, limit_nusd: int | None = LIMIT_NUSD, wallet_id: str = "w") -> None:
    owner = Member("own", wallet_id, "Owner", Role.OWNER, MemberStatus.ACTIVE, None, "")
    await book.create_org_with_owner(wallet_id, "Org", owner, ManagementKeyRecord("mk", "h-mk", "mwm-", "own", None))
    await book.create_member(Member("dev", wallet_id, "Dev", Role.DEVELOPER, MemberStatus.ACTIVE, limit_nusd, ""))


@pytest.fixture(params=["in_process", "redis"])
async def money(request: pytest.FixtureRequest, book: LedgerStore, tmp_path: Path, redis_url: str,
                redis_prefix: str) -> AsyncIterator[tuple[Billing, HoldStore, Operations]]:
    async with contextlib.AsyncExitStack() as stack:
        holds: HoldStore
        if request.param == "redis":
            client = aioredis.from_url(redis_url)
            holds = RedisHolds(client, prefix=redis_prefix, close_client=True)
            stack.push_async_callback(holds.close)
        else:
            holds = InProcessHolds()
        settler = Settler(book, holds, LIMITS, Journal(tmp_path / "journal.jsonl"))
        settler.start()
        stack.push_async_callback(settler.close)
        ops = Operations(book, holds)
        await ops.create_wallet("w")
        await ops.credit("w", 1_000_000)
        await add_org(book)
        yield Billing(book, holds, settler, 60.0), holds, ops


async def test_a_hold_past_the_limit_is_refused_and_holds_nothing(money) -> None:
    billing, holds, ops = money
    cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)
    first = await billing.reserve("w", "r1", 600, (cap,))
    assert isinstance(first, Hold) and first.caps == (cap.cap_id,)
    second = await billing.reserve("w", "r2", 600, (cap,))
    assert isinstance(second, Refused) and second.reason is Refusal.BUDGET_EXCEEDED
    assert (second.available_nusd, second.needed_nusd, second.cap) == (400, 600, cap)
    assert (await holds.wallet("w")).held_nusd == 600  # the refused request holds nothing anywhere
    assert (await holds.wallet(cap_account("w", cap.cap_id))).held_nusd == 600
    async with first:
        result = await first.charge(record(first, 500))
    assert isinstance(result, SettleResult) and result.caps[0].remaining_nusd == 500
    mirror = await holds.wallet(cap_account("w", cap.cap_id))
    assert (mirror.balance_nusd, mirror.held_nusd) == (500, 0)
    assert (await ops.book.spend_cap(cap.cap_id)).remaining_nusd == 500
    assert isinstance(await billing.reserve("w", "r3", 500, (cap,)), Hold)


async def test_a_released_request_gives_its_cap_hold_back(money) -> None:
    billing, holds, _ = money
    cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)
    held = await billing.reserve("w", "r1", 900, (cap,))
    assert isinstance(held, Hold)
    async with held:
        pass  # the handler left without charging: released
    assert (await holds.wallet(cap_account("w", cap.cap_id))).held_nusd == 0 and (await holds.wallet("w")).held_nusd == 0


async def test_concurrent_requests_never_spend_past_the_limit(money) -> None:
    billing, holds, ops = money
    cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)

    async def one(i: int) -> bool:
        held = await billing.reserve("w", f"c{i}", 100, (cap,))
        if isinstance(held, Refused):
            assert held.reason is Refusal.BUDGET_EXCEEDED
            return False
        async with held:
            await asyncio.sleep(0.001 * (i % 5))
            assert isinstance(await held.charge(record(held, 100)), SettleResult)
        return True

    served = await asyncio.gather(*(one(i) for i in range(60)))
    assert sum(served) == LIMIT_NUSD // 100
    stored = await ops.book.spend_cap(cap.cap_id)
    assert stored is not None and stored.remaining_nusd == 0
    assert (await ops.book.wallet("w")).balance_nusd == 1_000_000 - LIMIT_NUSD
    assert (await holds.wallet(cap_account("w", cap.cap_id))).held_nusd == 0
    check_invariants(await ops.book.totals())


async def test_a_new_limit_reaches_the_hold_store_at_once(money) -> None:
    billing, holds, ops = money
    cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)
    held = await billing.reserve("w", "r1", 1_000, (cap,))
    assert isinstance(held, Hold)
    await held.release()
    await apply_member_limit(ops.book, holds, "dev", 300, datetime.now(UTC))
    refused = await billing.reserve("w", "r2", 400, (cap,))
    assert isinstance(refused, Refused) and refused.available_nusd == 300
    await apply_member_limit(ops.book, holds, "dev", None, datetime.now(UTC))
    assert (await holds.wallet(cap_account("w", cap.cap_id))).balance_nusd == UNLIMITED_NUSD
    assert isinstance(await billing.reserve("w", "r3", 400, (cap,)), Hold)


async def test_a_lost_mirror_is_rebuilt_from_the_ledger(money) -> None:
    billing, holds, ops = money
    cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)
    held = await billing.reserve("w", "r1", 700, (cap,))
    assert isinstance(held, Hold)
    async with held:
        await held.charge(record(held, 700))
    fresh = Billing(ops.book, InProcessHolds(), billing.settler, 60.0)  # a store that never saw this cap
    refused = await fresh.reserve("w", "r2", 400, (cap,))
    assert isinstance(refused, Refused) and refused.available_nusd == 300


async def test_a_refund_returns_the_charge_to_the_wallet_once(money) -> None:
    billing, _, ops = money
    held = await billing.reserve("w", "req_1", 500)
    assert isinstance(held, Hold)
    async with held:
        await held.charge(record(held, 500))
    before = (await ops.book.wallet("w")).balance_nusd
    outcome, amount, wallet = await ops.refund("req_1", "the upstream answered garbage")
    assert (outcome, amount, wallet.balance_nusd) == (TransferOutcome.CREATED, 500, before + 500)
    again, _, wallet = await ops.refund("req_1", "the upstream answered garbage")
    assert again is TransferOutcome.EXISTS and wallet.balance_nusd == before + 500
    page = await ops.book.entries(EntryQuery("w", limit=5, kinds=("refund",)))
    assert [(e.amount_nusd, e.counterparty, e.request_id) for e in page.items] == [(500, REVENUE_ACCOUNT, "req_1")]
    check_invariants(await ops.book.totals())


async def test_two_processes_never_spend_past_a_members_limit(tmp_path: Path, fake_upstream: str) -> None:
    allowed = 7
    async with cluster(tmp_path, fake_upstream) as (env, config, ops):
        ports = [free_port(), free_port()]
        processes = [serve(env, config, port) for port in ports]
        try:
            for port, process in zip(ports, processes, strict=True):
                await wait_healthy(f"http://127.0.0.1:{port}", process)
            await ops.create_wallet("team")
            await ops.credit("team", 1000 * FLAT_FEE_NUSD)
            await add_org(ops.book, allowed * FLAT_FEE_NUSD, wallet_id="team")  # type: ignore[arg-type]
            new, _ = await ops.create_key("team", "dev key", member_id="dev")
            clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=new.secret, max_retries=0)
                       for p in ports]

            async def one(i: int) -> bool:
                try:
                    await clients[i % 2].chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "x"}])
                    return True
                except openai.APIStatusError as exc:
                    assert exc.status_code == 402 and exc.code == "budget_exceeded", exc
                    assert exc.response.headers["x-should-retry"] == "false" and "resets at" in exc.message
                    return False

            served = await asyncio.gather(*(one(i) for i in range(100)))
        finally:
            for process in processes:
                stop(process)
        assert sum(served) == allowed
        cap = member_cap("dev", datetime.now(UTC), LIMIT_NUSD)
        stored = await ops.book.spend_cap(cap.cap_id)  # type: ignore[attr-defined]
        assert stored is not None and stored.remaining_nusd == 0
        assert (await ops.book.wallet("team")).balance_nusd == (1000 - allowed) * FLAT_FEE_NUSD
        mirror = await ops.holds.wallet(cap_account("team", cap.cap_id))
        assert mirror is not None and mirror.held_nusd == 0
        check_invariants(await ops.book.totals())


def test_the_cap_record_survives_the_journal() -> None:
    capped = dataclasses.replace(usage("r", "w", 5), caps=("member:dev:2026-11",))
    assert UsageRecord(**capped.as_dict()) == capped  # the journal writes as_dict() and reads it back
    assert "caps" not in usage("r", "w", 5).as_dict()  # uncapped lines read as before


# --- a bot's daily and monthly caps reset at 00:00 UTC (an injected clock) -------
# The clock is far from today, so the usage rows the cap rows open from (their
# real created_at) cannot fall in the windows under test.

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
