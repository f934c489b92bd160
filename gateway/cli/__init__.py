"""`meterway`: serve the gateway, migrate, and manage wallets and keys."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import ConfigError, Settings, load_settings
from gateway import backends
from gateway.backends import EXIT_CANNOT_LISTEN, EXIT_DATABASE_DOWN, EXIT_REDIS_DOWN, EXIT_REFUSED, EXIT_USAGE, StartupError
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.money import MoneyFormatError, format_usd, parse_usd

CONFIG_ENV = "MW_CONFIG"
LOG_LEVELS = ("debug", "info", "warning", "error")
EXIT_CODES = f"""exit codes:
  0  done
  {EXIT_REFUSED}  the operation was refused (unknown wallet, conflicting --id, bad amount)
  {EXIT_USAGE}  a bad argument, or a config file that is missing or invalid
  {EXIT_DATABASE_DOWN}  the database (ledger) cannot be reached
  {EXIT_REDIS_DOWN}  Redis cannot be reached
  {backends.EXIT_SCHEMA_BEHIND}  the database schema is behind: run `meterway migrate`
  {backends.EXIT_REDIS_POLICY}  Redis may evict keys: its maxmemory-policy must be noeviction
  {EXIT_CANNOT_LISTEN}  the listen address is taken or not allowed
  130  interrupted
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fake-upstream"]:
        from fakes.openai import main as fake_main

        return fake_main(argv[1:])
    args = _parser().parse_args(argv)  # a bad argument: usage on stderr, exit 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "demo":
            from gateway.demo import run_demo

            return run_demo(args)
        config_path = args.config or os.environ.get(CONFIG_ENV)
        settings = load_settings(config_path)
        return int(args.run(settings, args))
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:  # noqa: BLE001 - expected classes become a message and an exit code
        code = _expected_failure(exc)
        if code is None:
            raise
        print(f"meterway: {exc or type(exc).__name__}", file=sys.stderr)
        return code


def _expected_failure(exc: BaseException) -> int | None:
    """The exit code of a failure an operator can act on (no traceback), or None for a bug."""
    import errno

    import redis.exceptions

    if isinstance(exc, ConfigError):
        return EXIT_USAGE
    if isinstance(exc, StartupError):
        return exc.exit_code
    if isinstance(exc, LedgerUnavailable):
        return EXIT_DATABASE_DOWN
    if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
        return EXIT_REDIS_DOWN
    if isinstance(exc, (LedgerError, MoneyFormatError, ValueError)):
        return EXIT_REFUSED
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
        return EXIT_CANNOT_LISTEN
    return None


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in every option's help; the epilog's lines kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        # A help text that names its own default ("default: $MW_CONFIG") is not told "(default: None)".
        if action.help and "default:" in action.help:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meterway")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meterway", description=__doc__, epilog=EXIT_CODES, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"meterway {_version()}")
    parser.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV}; none = defaults + environment)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="log verbosity")
    # Each command takes --config and --log-level too; SUPPRESS keeps them from erasing the global ones.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=f"TOML config file (default: ${CONFIG_ENV})")
    common.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log verbosity (default: info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=help, epilog=EXIT_CODES, formatter_class=_Formatter, **kwargs)
        return sub

    demo = command(commands, "demo", "try Meterway now: the fake provider in-process, an embedded ledger, a funded "
                   "wallet and a key, printed with a ready curl line (ignores --config, DATABASE_URL, REDIS_URL)",
                   parents=[common])
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (0 = any free port)")
    demo.add_argument("--db", default="meterway-demo.sqlite3",
                      help="the demo's SQLite ledger, relative to the working directory; kept between runs")

    serve = command(commands, "serve", "run the gateway", parents=[common])
    serve.add_argument("--workers", type=int, default=1, help="processes sharing one port (needs Postgres + Redis)")
    serve.add_argument("--host", help="address to listen on (default: listen.host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: listen.port)")
    serve.add_argument("--migrate", action="store_true",
                       help="apply pending database migrations before serving (without it, a Postgres schema "
                            "that is behind is refused; the embedded SQLite file is always migrated)")
    serve.set_defaults(run=_serve)

    migrate = command(commands, "migrate", "apply pending database migrations and say which, and where", parents=[common])
    migrate.set_defaults(run=_migrate)

    keys = command(commands, "keys", "API keys").add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = command(keys, "create", "create a key; prints the secret once", parents=[common])
    create.add_argument("--wallet", required=True, help="the wallet the key spends from")
    create.add_argument("--name", help="a label for people")
    create.add_argument("--bot", help="a label recorded on every usage row of this key")
    create.set_defaults(run=_sync(_keys_create))
    listing = command(keys, "list", "list keys (never their secrets)", parents=[common])
    listing.add_argument("--wallet", help="only this wallet's keys")
    listing.set_defaults(run=_sync(_keys_list))
    revoke = command(keys, "revoke", "revoke a key", parents=[common])
    revoke.add_argument("key_id", help="the key's id (from keys list)")
    revoke.set_defaults(run=_sync(_keys_revoke))

    wallet = command(commands, "wallet", "wallets").add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    w_create = command(wallet, "create", "create a wallet", parents=[common])
    w_create.add_argument("wallet_id", help="letters, digits, _ . - (up to 64)")
    w_create.add_argument("--name", help="a label for people")
    w_create.set_defaults(run=_sync(_wallet_create))
    w_credit = command(wallet, "credit", "operator adjustment: add funds", parents=[common])
    w_credit.add_argument("wallet_id", help="the wallet to credit")
    w_credit.add_argument("amount", help="USD, e.g. 10 or 0.25")
    w_credit.add_argument("--id", dest="transfer_id", help="idempotency key (retry-safe); none = one is made and printed")
    w_credit.add_argument("--memo", help="a note kept with the transfer")
    w_credit.set_defaults(run=_sync(_wallet_credit))
    w_show = command(wallet, "show", "balance, and what the running gateway holds", parents=[common])
    w_show.add_argument("wallet_id", help="the wallet to show")
    w_show.set_defaults(run=_sync(_wallet_show))
    w_tx = command(wallet, "transactions", "the wallet's transfers, newest first", parents=[common])
    w_tx.add_argument("wallet_id", help="the wallet")
    w_tx.add_argument("--limit", type=int, default=50, help="at most this many")
    w_tx.set_defaults(run=_sync(_wallet_transactions))

    journal = command(commands, "journal", "the settle journal: settlements not committed at shutdown")
    j_commands = journal.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    j_replay = command(
        j_commands, "replay",
        "commit the journal now (idempotent: a settled request is not charged again); prints the counts",
        parents=[common])
    j_replay.set_defaults(run=_sync(_journal_replay))

    commands.add_parser("fake-upstream", help="an OpenAI-compatible fake provider (see: meterway fake-upstream --help)")
    return parser


def _sync(fn: Callable[[Any, Settings, argparse.Namespace], Awaitable[int]]) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def with_ops() -> int:
            from gateway.backends import open_stores
            from gateway.operations import Operations

            stores = await open_stores(settings, check_redis="none")
            try:
                return await fn(Operations(stores.book, stores.holds), settings, args)
            finally:
                await stores.close()

        return asyncio.run(with_ops())

    return run


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    _print_applied(asyncio.run(backends.migrate(settings)), settings)
    return 0


def _print_applied(applied: list[int], settings: Settings) -> None:
    where = backends.describe_database(settings)
    if applied:
        print(f"applied migrations {', '.join(f'{v:04d}' for v in applied)} to {where}", flush=True)
    else:
        print(f"{where}: schema up to date, nothing to apply", flush=True)


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


async def _journal_replay(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    from gateway.money.settlement import settler_for

    report = await settler_for(ops.book, ops.holds, settings).replay_journal()
    print(f"journal {settings.journal_path}: {report.summary()}")
    return 1 if report.kept or report.busy_files else 0


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
        return EXIT_USAGE
    if settings.metrics_token is None and not _is_loopback(settings.listen.host):
        print(f"meterway: listening on {settings.listen.host} would open /metrics (revenue per model) to the "
              "network: set metrics_token (MW_METRICS_TOKEN), or listen on 127.0.0.1", file=sys.stderr)
        return EXIT_USAGE
    config_path = args.config or os.environ.get(CONFIG_ENV)
    if args.migrate:
        _print_applied(asyncio.run(backends.migrate(settings)), settings)
    # Refuse here, once, with a clear message (schema behind, Redis evicting or
    # down) rather than in every worker; then say what is being served.
    asyncio.run(_check_stores(settings))
    for line in startup_summary(settings, config_path):
        print(f"meterway: {line}", flush=True)
    if args.workers == 1:
        _run_worker(settings, reuse_port=False, log_level=args.log_level)
        return 0
    return _run_workers(settings, args.workers, args.log_level)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


async def _check_stores(settings: Settings) -> None:
    stores = await backends.open_stores(settings, check_redis="full")
    await stores.close()


def startup_summary(settings: Settings, config_path: str | None) -> list[str]:
    """What this gateway serves from, printed at start: a wrong file or an empty ledger shows at once."""
    config = str(Path(config_path).resolve()) if config_path else "none (defaults and environment)"
    lines = [f"config:    {config}", f"ledger:    {backends.describe_database(settings)}",
             f"holds:     {backends.describe_holds(settings)}"]
    if not settings.providers:
        lines.append("providers: none configured: every model call is a 404 (add [providers.NAME] to the config)")
    for name, provider in settings.providers.items():
        lines.append(f"provider:  {name} -> {provider.base_url} ({len(provider.models)} models)")
    host = settings.listen.host
    shown = f"[{host}]" if ":" in host else host
    lines.append(f"listen:    http://{shown}:{settings.listen.port}")
    return lines


def _run_worker(settings: Settings, reuse_port: bool, log_level: str = "info") -> None:
    from gateway import logs
    from gateway.http.app import create_app

    # Here too: a spawned worker starts with no logging configured.
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logs.install(settings)  # here, so a spawned worker's log lines are redacted too

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(create_app(settings), host=settings.listen.host, port=settings.listen.port, reuse_port=reuse_port,
                shutdown_timeout=settings.limits.shutdown_timeout_s, access_log=None,
                print=lambda msg: print(f"meterway [{os.getpid()}]: {msg}", flush=True))


def _run_workers(settings: Settings, count: int, log_level: str = "info") -> int:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_run_worker, args=(settings, True, log_level), daemon=False) for _ in range(count)]
    for worker in workers:
        worker.start()

    def stop(signum: int, frame: Any) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGINT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)


if __name__ == "__main__":
    sys.exit(main())
