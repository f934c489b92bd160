"""Random sequences of credit, hold, settle, release and expire keep every invariant.

The system under test is the real money path below HTTP (Billing, Settler, the
book and the hold store), on both backends. A plain Python model says what each
step must do; after every step the book, the holds and the model must agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.money.billing import Billing, Hold, Refusal, Refused
from gateway.money.operations import Operations
from gateway.money.settlement import SettleLimits, Settler
from gateway.money.sweeper import sweep_once
from ledger.book import Book, Payee, UsageRecord, check_invariants
from ledger.holds import HoldStore
from ledger.inprocess_holds import InProcessHolds
from tests.conftest import REDIS_TEST_URL, pg_schema

WALLETS = ("a", "b")
HOLD_TTL_S = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Model:
    balance: dict[str, int] = field(default_factory=lambda: {w: 0 for w in WALLETS})
    open_holds: dict[str, tuple[str, int]] = field(default_factory=dict)  # request id -> (wallet, amount)
    charged: int = 0
    shortfall: int = 0

    def held(self, wallet: str) -> int:
        return sum(amount for w, amount in self.open_holds.values() if w == wallet)


operation = st.one_of(
    st.tuples(st.just("credit"), st.sampled_from(WALLETS), st.integers(1, 5_000)),
    st.tuples(st.just("reserve"), st.sampled_from(WALLETS), st.integers(1, 3_000)),
    st.tuples(st.just("settle"), st.integers(0, 20), st.integers(0, 150)),  # cost as % of the hold
    st.tuples(st.just("release"), st.integers(0, 20), st.just(0)),
    st.tuples(st.just("expire"), st.integers(0, 20), st.just(0)),
)


def record(hold: Hold, cost_nusd: int, payees: tuple[Payee, ...] = ()) -> UsageRecord:
    """The usage record a served request hands to hold.charge(); also used by tests/test_money_service.py."""
    return UsageRecord(
        request_id=hold.request_id, key_id="k", wallet_id=hold.wallet_id, bot=None, model="m", upstream="u",
        endpoint="chat", status="ok", usage_source="upstream", prompt_tokens=1, cached_tokens=0, completion_tokens=1,
        input_per_1m_nusd=0, cached_input_per_1m_nusd=0, output_per_1m_nusd=0, per_call_nusd=0,
        cost_nusd=cost_nusd, held_nusd=hold.amount_nusd, latency_ms=0.0, upstream_latency_ms=0.0, payees=payees,
    )


@contextlib.asynccontextmanager
async def stores(backend: str, tmp_dir: str, clock: Clock) -> AsyncIterator[tuple[Book, HoldStore]]:
    if backend == "embedded":
        from ledger.sqlite_book import SqliteBook

        book: Book = SqliteBook(f"{tmp_dir}/{uuid.uuid4().hex}.sqlite3")
        await book.migrate()
        yield book, InProcessHolds(clock=clock)
        await book.close()
        return
    from ledger.postgres_book import PostgresBook
    from ledger.redis_holds import RedisHolds

    async with pg_schema() as dsn:
        book = await PostgresBook.connect(dsn)
        await book.migrate()
        client = aioredis.from_url(REDIS_TEST_URL)
        prefix = f"mwp{uuid.uuid4().hex[:8]}"
        try:
            yield book, RedisHolds(client, prefix=prefix)
        finally:
            async for key in client.scan_iter(match=f"{prefix}:*"):
                await client.delete(key)
            await client.aclose()
            await book.close()


async def run(backend: str, tmp_dir: str, steps: list[tuple[str, object, int]]) -> None:
    clock = Clock()
    async with stores(backend, tmp_dir, clock) as (book, holds):
        settler = Settler(book, holds, SettleLimits(batch_max=8, queue_max=100, retry_max=0, retry_delay_s=0))
        settler.start()
        billing = Billing(book, holds, settler, HOLD_TTL_S)
        ops = Operations(book, holds)
        model = Model()
        live: list[Hold] = []
        for wallet in WALLETS:
            await ops.create_wallet(wallet)
        try:
            for step in steps:
                await apply(step, ops, billing, book, holds, clock, model, live)
                await check(book, holds, model)
        finally:
            await settler.close()


async def apply(step, ops, billing, book, holds, clock, model: Model, live: list[Hold]) -> None:
    kind, target, amount = step
    if kind == "credit":
        await ops.credit(target, amount)
        model.balance[target] += amount
    elif kind == "reserve":
        request_id = f"r{uuid.uuid4().hex[:12]}"
        available = model.balance[target] - model.held(target)
        result = await billing.reserve(target, request_id, amount)
        if available >= amount:
            assert isinstance(result, Hold), (result, available, amount)
            live.append(result)
            model.open_holds[request_id] = (target, amount)
        else:
            assert isinstance(result, Refused) and result.reason is Refusal.INSUFFICIENT_FUNDS, result
            assert result.available_nusd == max(available, 0), (result, available)
    elif live:
        hold = live.pop(target % len(live))
        if kind == "settle":
            cost = hold.amount_nusd * amount // 100
            result = await hold.charge(record(hold, cost))
            charged = min(cost, model.balance[hold.wallet_id])
            assert (result.charged_nusd, result.shortfall_nusd) == (charged, cost - charged)
            model.balance[hold.wallet_id] -= charged
            model.charged += charged
            model.shortfall += cost - charged
        elif kind == "release":
            await hold.release()
        else:
            # Nobody settles it: once its time passes, the sweeper must release it.
            if isinstance(holds, InProcessHolds):
                # Moving the clock past the TTL expires every hold taken before
                # it, not just this one: the sweeper must release each exactly once.
                clock.now += HOLD_TTL_S + 1
                assert await sweep_once(book, holds, 100) == 1 + len(live)
                for other in live:
                    del model.open_holds[other.request_id]
                live.clear()
            else:
                await hold.release()  # Redis's clock is real; its expiry has its own tests
        del model.open_holds[hold.request_id]


async def check(book: Book, holds: HoldStore, model: Model) -> None:
    totals = await book.totals()
    check_invariants(totals)
    assert totals.usage_charged_nusd == model.charged and totals.usage_shortfall_nusd == model.shortfall
    for wallet in WALLETS:
        stored = await book.wallet(wallet)
        assert stored is not None and stored.balance_nusd == model.balance[wallet] >= 0
        mirror = await holds.wallet(wallet)
        held = mirror.held_nusd if mirror else 0
        assert held == model.held(wallet), (wallet, held, model.open_holds)
        if mirror is not None:
            assert mirror.balance_nusd == stored.balance_nusd


@pytest.mark.parametrize("backend,examples", [("embedded", 60), ("production", 20)])
def test_random_money_sequences_keep_every_invariant(backend: str, examples: int, tmp_path) -> None:
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(operation, min_size=1, max_size=25))
    def scenario(steps: list[tuple[str, object, int]]) -> None:
        asyncio.run(run(backend, str(tmp_path), steps))

    scenario()
