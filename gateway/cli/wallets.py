"""`meterway wallet create|credit|show|transactions|refund`: wallets, operator adjustments and refunds."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.settings import Settings
from ledger.errors import LedgerUnavailable
from ledger.money import format_usd, parse_usd


async def wallet_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    wallet = await ops.create_wallet(args.wallet_id, args.name)
    print(f"created wallet {wallet.wallet_id}")
    return 0


async def wallet_credit(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    from gateway.money.operations import new_credit_id

    amount = parse_usd(args.amount)
    if amount <= 0:
        raise ValueError("amount must be positive")
    # Without --id, make one and show it: re-running with it can never credit twice.
    transfer_id = args.transfer_id or new_credit_id()
    retry_hint = f"re-run with --id {transfer_id} to retry safely"
    try:
        outcome, wallet = await ops.credit(args.wallet_id, amount, transfer_id, args.memo)
    except LedgerUnavailable:
        # The commit may or may not have happened: only the same id tells.
        print(f"meterway: the credit's outcome is unknown; {retry_hint}", file=sys.stderr)
        raise
    print(f"{outcome.value}: {args.wallet_id} balance {format_usd(wallet.balance_nusd)} USD")
    if args.transfer_id is None:
        print(f"transfer id: {transfer_id}; {retry_hint}")
    return 0


async def wallet_show(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    view = await ops.show(args.wallet_id)
    balance = format_usd(view.wallet.balance_nusd)
    if settings.redis_url:
        # Redis holds are shared by every gateway: this process sees what they hold.
        print(f"wallet:    {view.wallet.wallet_id}\nbalance:   {balance} USD\n"
              f"held:      {format_usd(view.held_nusd)} USD\navailable: {format_usd(view.available_nusd)} USD")
        return 0
    # In-process holds live in the running gateway alone: ask it, or say we cannot know.
    url, remote = await _gateway_view(settings, args.wallet_id)
    if remote is not None:
        print(f"wallet:    {view.wallet.wallet_id}\nbalance:   {remote['balance']} USD\n"
              f"held:      {format_usd(int(remote['held_nusd']))} USD\navailable: {remote['available']} USD\n"
              f"(held and available from the running gateway at {url})")
        return 0
    print(f"wallet:    {view.wallet.wallet_id}\nbalance:   {balance} USD\n"
          f"held:      unknown (in-process holds live in the running gateway; see GET /admin/wallets/{args.wallet_id}"
          f" on it{'' if settings.admin_token else ', with admin_token set'})\n"
          f"available: at most {balance} USD")
    return 0


async def _gateway_view(settings: Settings, wallet_id: str) -> tuple[str, dict[str, Any] | None]:
    """GET /admin/wallets/{id} of the gateway at listen.host:port, if it runs and admin_token is set."""
    import aiohttp

    host = settings.listen.host
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{settings.listen.port}"
    if settings.admin_token is None:
        return url, None
    headers = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            async with session.get(f"{url}/admin/wallets/{wallet_id}", headers=headers) as response:
                if response.status != 200:
                    return url, None
                body: dict[str, Any] = await response.json()
                return url, body
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return url, None


async def wallet_transactions(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    for r in await ops.transactions(args.wallet_id, args.limit):
        t = r.transfer
        sign = "+" if t.credit_account == args.wallet_id else "-"
        print(f"{r.created_at}\t{t.kind.value}\t{sign}{format_usd(t.amount_nusd)}\t{t.transfer_id}\t{t.memo or ''}")
    return 0


async def wallet_refund(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    """Give a settled request's charge back to its wallet; running it again refunds nothing more."""
    outcome, amount, wallet = await ops.refund(args.request_id, args.reason)
    done = "refunded" if outcome.value == "created" else "already refunded"
    print(f"{done}: {format_usd(amount)} USD to {wallet.wallet_id} for {args.request_id};"
          f" balance {format_usd(wallet.balance_nusd)} USD")
    return 0
