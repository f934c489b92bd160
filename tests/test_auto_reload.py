"""Auto-reload across two `meterway serve` processes: one reload however many settlements cross the threshold.

The card is saved in localstripe (as Checkout's setup_future_usage leaves it);
the gateways charge it off-session through the Stripe front, and the webhook
(or the immediate `succeeded`) credits it once. A declined card pauses
auto-reload and leaves the owner a notification.
"""

from __future__ import annotations

import asyncio
import time

import openai
import stripe

from ledger.book import FUNDING_ACCOUNT, Transfer, TransferKind
from ledger.money import parse_usd
from tests.test_multiprocess import FLAT_FEE_NUSD, cluster, free_port, fund, serve, stop, wait_healthy
from tests.test_topups import WEBHOOK_SECRET

CONCURRENCY = 50
WAIT_S = 15.0


def saved_card(fake_stripe, number: str) -> tuple[str, str]:
    """(customer, payment method) as a Checkout with setup_future_usage leaves them (blocking: run it in a thread)."""
    client = stripe.StripeClient(fake_stripe.secret_key, base_addresses={"api": fake_stripe.api_base})
    customer = client.v1.customers.create({"description": "auto-reload test"})
    method = client.v1.payment_methods.create({"type": "card", "card": {
        "number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"}})
    client.v1.payment_methods.attach(method.id, {"customer": customer.id})
    return customer.id, method.id


async def spend_concurrently(ports: list[int], key: str, n: int) -> None:
    clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=key, max_retries=0) for p in ports]
    await asyncio.gather(*(clients[i % len(clients)].chat.completions.create(
        model="flat-fee", messages=[{"role": "user", "content": "x"}]) for i in range(n)))


async def auto_reload_deposits(ops, wallet_id: str) -> list:
    page = await ops.book.list_deposits(wallet_id, 50, None)
    return [d for d in page.items if d.purpose == "auto_reload"]


async def wait_until(check, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_one_reload_for_fifty_settlements_across_two_processes_then_a_decline_pauses(
        tmp_path, fake_upstream, fake_stripe) -> None:
    env = {"STRIPE_SECRET_KEY": fake_stripe.secret_key, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "MW_STRIPE__ENABLED": "true", "MW_STRIPE__API_BASE": fake_stripe.api_base,
           "MW_STRIPE__MAX_RETRIES": "0", "MW_TOPUP__AUTO_RELOAD_REFRESH_S": "0.05"}
    async with cluster(tmp_path, fake_upstream, env) as (env, config, ops):
        ports = [free_port(), free_port()]
        processes = [serve(env, config, port) for port in ports]
        try:
            for port, process in zip(ports, processes, strict=True):
                await wait_healthy(f"http://127.0.0.1:{port}", process)
            await fake_stripe.register_webhook(f"http://127.0.0.1:{ports[0]}/webhooks/stripe", WEBHOOK_SECRET)
            threshold, amount = parse_usd("5"), parse_usd("20")
            start = threshold + 20 * FLAT_FEE_NUSD  # the 21st settlement crosses; 29 more land below
            key = await fund(ops, "reloaded", start)
            await ops.book.save_payment_method("reloaded", *await asyncio.to_thread(saved_card, fake_stripe, "4242424242424242"))
            await ops.book.set_auto_reload("reloaded", True, threshold, amount)
            await asyncio.sleep(0.2)  # both processes' caches see it (auto_reload_refresh_s)
            await spend_concurrently(ports, key, CONCURRENCY)

            async def credited() -> bool:
                found = await auto_reload_deposits(ops, "reloaded")
                return bool(found) and all(d.status.value == "completed" for d in found)

            await wait_until(credited, "the reload's credit")
            await asyncio.sleep(0.5)  # any second reload would have started by now
            reloads = await auto_reload_deposits(ops, "reloaded")
            assert len(reloads) == 1 and reloads[0].amount_credited_nusd == amount, reloads
            wallet = await ops.book.wallet("reloaded")
            assert wallet is not None and wallet.balance_nusd == start - CONCURRENCY * FLAT_FEE_NUSD + amount
            state = await ops.book.auto_reload("reloaded")
            assert state is not None and state.in_flight_deposit_id is None and state.paused_reason is None

            # a declined card: the next crossing pauses auto-reload and tells the owner
            await ops.book.save_payment_method("reloaded", *await asyncio.to_thread(saved_card, fake_stripe, "4000000000000341"))
            await ops.book.transfer(Transfer("drain", "reloaded", FUNDING_ACCOUNT,
                                             wallet.balance_nusd - threshold - FLAT_FEE_NUSD, TransferKind.ADJUSTMENT))
            drained = await ops.book.wallet("reloaded")
            assert drained is not None and drained.balance_nusd == threshold + FLAT_FEE_NUSD
            await ops.holds.sync("reloaded", drained.balance_nusd, drained.version)
            await spend_concurrently(ports, key, 4)

            async def paused() -> bool:
                found = await ops.book.auto_reload("reloaded")
                return found is not None and found.paused_reason is not None

            await wait_until(paused, "auto-reload to pause")
            notes = await ops.book.notifications("reloaded", 10)
            assert [n.kind for n in notes] == ["auto_reload_paused"] and "declined" in notes[0].message, notes
            failed = [d for d in await auto_reload_deposits(ops, "reloaded") if d.status.value == "failed"]
            assert len(failed) == 1, failed
            await spend_concurrently(ports, key, 2)
            await asyncio.sleep(0.3)
            assert len(await auto_reload_deposits(ops, "reloaded")) == 2  # paused: no third attempt
        finally:
            for process in processes:
                stop(process)
