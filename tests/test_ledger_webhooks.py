"""The event outbox, endpoints and balance alerts: one contract for SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger.book import FUNDING_ACCOUNT, Transfer, TransferKind
from ledger.errors import InsufficientFunds, UnknownAccount
from ledger.owners import Deposit, DepositStatus
from ledger.store import LedgerStore
from ledger.webhooks import BalanceAlert, Endpoint
from tests.test_ledger_contract import deposit

EVERYTHING = ("wallet.balance_low", "wallet.empty", "deposit.completed", "auto_reload.failed", "cap.reached")


async def spend(book: LedgerStore, transfer_id: str, amount: int) -> None:
    await book.transfer(Transfer(transfer_id, "acme", FUNDING_ACCOUNT, amount, TransferKind.ADJUSTMENT, memo="spend"))


async def events(book: LedgerStore, endpoint: Endpoint) -> list[tuple[str, dict]]:
    """Every event the endpoint would be sent, in order (moving its cursor as a delivery would)."""
    out = []
    endpoint = await book.endpoint(endpoint.endpoint_id)  # where its cursor is now
    while (event := await book.next_event(endpoint, 0)) is not None:
        out.append((event.type, event.payload))
        await book.record_attempt(endpoint.endpoint_id, event, 1, "delivered", 200, None, 1.0, None)
        endpoint = await book.endpoint(endpoint.endpoint_id)
    return out


async def alert_of(book: LedgerStore, alert_id: str) -> BalanceAlert:
    [found] = [a for a in await book.alerts("acme") if a.alert_id == alert_id]
    return found


async def endpoint_for(book: LedgerStore, endpoint_id: str = "we1") -> Endpoint:
    return await book.create_endpoint(Endpoint(endpoint_id, "acme", "https://example.com/hook", EVERYTHING, "sealed"))


async def test_an_endpoint_hears_what_happens_after_it_is_made_in_order(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    assert await book.emit_event("evt-before", "acme", "cap.reached", {"n": 0})
    hook = await endpoint_for(book)
    assert await book.emit_event("cap.reached:acme:x", "acme", "cap.reached", {"n": 1})
    assert not await book.emit_event("cap.reached:acme:x", "acme", "cap.reached", {"n": 2})  # once per id
    await book.emit_event("evt-other", "acme", "usage.daily_summary", {"n": 3})  # not subscribed
    await book.emit_event("evt-last", "acme", "cap.reached", {"n": 4})
    assert [p["n"] for _, p in await events(book, hook)] == [1, 4]
    with pytest.raises(UnknownAccount):
        await book.create_endpoint(Endpoint("we2", "ghost", "https://x", EVERYTHING, "sealed"))


async def test_a_balance_alert_fires_once_per_crossing_and_re_arms_with_money(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.transfer(deposit("d1", "acme", 1_000))
    hook = await endpoint_for(book)
    assert (await book.create_alert(BalanceAlert("al1", "acme", "wallet.balance_low", 500))).armed
    await spend(book, "s1", 400)  # 600: above
    await spend(book, "s2", 200)  # 400: crossed
    await spend(book, "s3", 100)  # 300: still below, already fired
    [(kind, payload)] = await events(book, hook)
    assert kind == "wallet.balance_low" and payload["balance_nusd"] == 400 and payload["threshold_nusd"] == 500
    assert not (await alert_of(book, "al1")).armed
    await book.transfer(deposit("d2", "acme", 1_000))  # 1300: re-armed
    assert (await alert_of(book, "al1")).armed
    await spend(book, "s4", 900)  # 400: fires again, and wallet.empty is armed (made with the endpoint)
    await spend(book, "s5", 400)  # 0: empty
    assert [k for k, _ in await events(book, hook)] == ["wallet.balance_low", "wallet.empty"]


async def test_a_rolled_back_change_writes_no_event(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    await book.transfer(deposit("d1", "acme", 1_000))
    hook = await endpoint_for(book)
    await book.create_alert(BalanceAlert("al1", "acme", "wallet.balance_low", 500))
    with pytest.raises(InsufficientFunds):
        await spend(book, "s1", 5_000)  # refused by the book: the alert's trigger is rolled back with it
    assert await events(book, hook) == [] and (await alert_of(book, "al1")).armed


async def test_a_deposit_writes_its_event_and_moves_share_alerts(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    hook = await endpoint_for(book)
    await book.create_alert(BalanceAlert("al1", "acme", "wallet.balance_low", 0, share_percent=20))
    now = datetime.now(UTC).isoformat()
    await book.create_deposit(Deposit("dep1", "acme", "card", 50_000, "50.00", "usd", DepositStatus.PENDING, now))
    await book.complete_deposit("dep1")
    await book.complete_deposit("dep1")  # completing twice credits and tells once
    [(kind, payload)] = await events(book, hook)
    assert kind == "deposit.completed" and payload["deposit_id"] == "dep1" and payload["amount_nusd"] == 50_000
    alert = await alert_of(book, "al1")
    assert alert.threshold_nusd == 10_000 and alert.armed  # 20% of the last top-up
    await spend(book, "s1", 40_001)
    assert [k for k, _ in await events(book, hook)] == ["wallet.balance_low"]


async def test_endpoints_are_leased_to_one_process_and_retried_later(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    hook = await endpoint_for(book)
    [claimed] = await book.claim_endpoints(10, 60)
    assert claimed.endpoint_id == hook.endpoint_id and await book.claim_endpoints(10, 60) == []
    await book.emit_event("e1", "acme", "cap.reached", {})
    event = await book.next_event(claimed, 0)
    assert event is not None
    await book.record_attempt(hook.endpoint_id, event, 1, "failed", 500, "HTTP 500", 3.0, 30.0)
    assert await book.claim_endpoints(10, 60) == []  # released, but not due for 30 s
    [attempt] = await book.attempts(hook.endpoint_id, 10)
    assert (attempt.outcome, attempt.status_code, attempt.event_id) == ("failed", 500, "e1")
    assert (await book.endpoint(hook.endpoint_id)).attempts == 1
    assert await book.disable_endpoint(hook.endpoint_id) and not await book.disable_endpoint(hook.endpoint_id)
    assert await book.endpoints("acme") == []


async def test_a_day_of_usage_is_summed(book: LedgerStore) -> None:
    await book.create_wallet("acme")
    now = datetime.now(UTC)
    summary = await book.usage_summary("acme", now - timedelta(days=1), now + timedelta(seconds=1))
    assert (summary.requests, summary.cost_nusd) == (0, 0)
    await endpoint_for(book)
    assert await book.wallets_subscribed("cap.reached") == ["acme"]
    assert await book.wallets_subscribed("usage.daily_summary") == []
