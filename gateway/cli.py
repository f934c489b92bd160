"""`meterway`: serve the gateway, migrate, and manage wallets and keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from typing import Any, Awaitable, Callable

from aiohttp import web

from config.settings import ConfigError, Settings, load_settings
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.money import MoneyFormatError, format_usd, parse_usd

CONFIG_ENV = "MW_CONFIG"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-upstream"]:
        from gateway.fake_upstream import main as fake_main

        return fake_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config or os.environ.get(CONFIG_ENV))
        return args.run(settings, args)
    except ConfigError as exc:
        print(f"meterway: {exc}", file=sys.stderr)
        return 2
    except (LedgerError, MoneyFormatError, ValueError) as exc:
        print(f"meterway: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterway", description=__doc__)
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV})")
    # Each command takes --config too; SUPPRESS keeps it from erasing the global one.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway", parents=[common])
    serve.add_argument("--workers", type=int, default=1, help="processes sharing one port (needs Postgres + Redis)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply database migrations", parents=[common])
    migrate.set_defaults(run=_sync(_migrate))

    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="create a key; prints the secret once", parents=[common])
    create.add_argument("--wallet", required=True)
    create.add_argument("--name")
    create.add_argument("--bot")
    create.set_defaults(run=_sync(_keys_create))
    listing = keys.add_parser("list", parents=[common])
    listing.add_argument("--wallet")
    listing.set_defaults(run=_sync(_keys_list))
    revoke = keys.add_parser("revoke", parents=[common])
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_sync(_keys_revoke))

    wallet = commands.add_parser("wallet", help="wallets").add_subparsers(dest="wallet_command", required=True)
    w_create = wallet.add_parser("create", parents=[common])
    w_create.add_argument("wallet_id")
    w_create.add_argument("--name")
    w_create.set_defaults(run=_sync(_wallet_create))
    w_credit = wallet.add_parser("credit", help="operator adjustment: add funds", parents=[common])
    w_credit.add_argument("wallet_id")
    w_credit.add_argument("amount", help="USD, e.g. 10 or 0.25")
    w_credit.add_argument("--id", dest="transfer_id", help="idempotency key (retry-safe)")
    w_credit.add_argument("--memo")
    w_credit.set_defaults(run=_sync(_wallet_credit))
    w_show = wallet.add_parser("show", parents=[common])
    w_show.add_argument("wallet_id")
    w_show.set_defaults(run=_sync(_wallet_show))
    w_tx = wallet.add_parser("transactions", parents=[common])
    w_tx.add_argument("wallet_id")
    w_tx.add_argument("--limit", type=int, default=50)
    w_tx.set_defaults(run=_sync(_wallet_transactions))

    commands.add_parser("fake-upstream", help="an OpenAI-compatible fake provider (see: meterway fake-upstream --help)")
    return parser


def _sync(fn: Callable[[Any, Settings, argparse.Namespace], Awaitable[int]]) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def with_ops() -> int:
            from gateway.backends import open_stores
            from gateway.operations import Operations

            stores = await open_stores(settings)
            try:
                return await fn(Operations(stores.book, stores.holds), settings, args)
            finally:
                await stores.close()

        return asyncio.run(with_ops())

    return run


async def _migrate(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    print("migrations are up to date (applied when the store opens)")
    return 0


async def _keys_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    new, record = await ops.create_key(args.wallet, args.name, args.bot)
    print(f"id:     {record.key_id}\nwallet: {record.wallet_id}\nkey:    {new.secret}")
    print("Store the key now: it is shown only once.", file=sys.stderr)
    return 0


async def _keys_list(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    for k in await ops.book.list_keys(args.wallet):
        state = "revoked" if k.revoked_at else "active"
        print(f"{k.key_id}\t{k.prefix}…\t{k.wallet_id}\t{k.name or '-'}\t{k.bot or '-'}\t{state}")
    return 0


async def _keys_revoke(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    if not await ops.book.revoke_key(args.key_id):
        print(f"meterway: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id} (other running gateways drop it within {settings.limits.key_cache_ttl_s:g} s)")
    return 0


async def _wallet_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    wallet = await ops.create_wallet(args.wallet_id, args.name)
    print(f"created wallet {wallet.wallet_id}")
    return 0


async def _wallet_credit(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    from gateway.operations import new_credit_id

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


async def _wallet_show(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    view = await ops.show(args.wallet_id)
    print(f"wallet:    {view.wallet.wallet_id}\nbalance:   {format_usd(view.wallet.balance_nusd)} USD\n"
          f"held:      {format_usd(view.held_nusd)} USD\navailable: {format_usd(view.available_nusd)} USD")
    return 0


async def _wallet_transactions(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    for r in await ops.transactions(args.wallet_id, args.limit):
        t = r.transfer
        sign = "+" if t.credit_account == args.wallet_id else "-"
        print(f"{r.created_at}\t{t.kind.value}\t{sign}{format_usd(t.amount_nusd)}\t{t.transfer_id}\t{t.memo or ''}")
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    listen = settings.listen.model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None})
    settings = settings.model_copy(update={"listen": listen})
    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.workers > 1 and (settings.embedded or not settings.redis_url):
        print("meterway: --workers > 1 needs DATABASE_URL (Postgres) and REDIS_URL: the embedded SQLite "
              "store and in-process holds cannot be shared between processes.", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(_migrate_only(settings))
    if args.workers == 1:
        _run_worker(settings, reuse_port=False)
        return 0
    return _run_workers(settings, args.workers)


async def _migrate_only(settings: Settings) -> None:
    from gateway.backends import open_book

    book = await open_book(settings)
    try:
        await book.migrate()
    finally:
        await book.close()


def _run_worker(settings: Settings, reuse_port: bool) -> None:
    from gateway import logs
    from gateway.app import create_app

    logs.install(settings)  # here, so a spawned worker's log lines are redacted too

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(create_app(settings), host=settings.listen.host, port=settings.listen.port, reuse_port=reuse_port,
                shutdown_timeout=settings.limits.shutdown_timeout_s, access_log=None,
                print=lambda msg: print(f"meterway [{os.getpid()}]: {msg}", flush=True))


def _run_workers(settings: Settings, count: int) -> int:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_run_worker, args=(settings, True), daemon=False) for _ in range(count)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)


if __name__ == "__main__":
    sys.exit(main())
