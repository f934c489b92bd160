"""`meterway`: serve the gateway, migrate, and manage wallets and keys."""

# The package: this module parses and dispatches; each command lives with its
# concept (serve.py, wallets.py, keys.py, replay.py, demo.py).

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from config.settings import ConfigError, Settings, load_settings
from gateway.cli.keys import keys_create, keys_list, keys_revoke
from gateway.cli.orgs import add_org_commands
from gateway.cli.prices import add_price_commands
from gateway.cli.replay import journal_replay
from gateway.cli.serve import CONFIG_ENV, migrate, serve
from gateway.cli.wallets import wallet_create, wallet_credit, wallet_refund, wallet_show, wallet_transactions
from gateway.money import stores
from gateway.money.stores import EXIT_CANNOT_LISTEN, EXIT_DATABASE_DOWN, EXIT_REDIS_DOWN, EXIT_REFUSED, EXIT_USAGE, StartupError
from ledger.errors import LedgerError, LedgerUnavailable
from ledger.money import MoneyFormatError

LOG_LEVELS = ("debug", "info", "warning", "error")
EXIT_CODES = f"""exit codes:
  0  done
  {EXIT_REFUSED}  the operation was refused (unknown wallet, conflicting --id, bad amount)
  {EXIT_USAGE}  a bad argument, or a config file that is missing or invalid
  {EXIT_DATABASE_DOWN}  the database (ledger) cannot be reached
  {EXIT_REDIS_DOWN}  Redis cannot be reached
  {stores.EXIT_SCHEMA_BEHIND}  the database schema is behind: run `meterway migrate`
  {stores.EXIT_REDIS_POLICY}  Redis may evict keys: its maxmemory-policy must be noeviction
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
            from gateway.cli.demo import run_demo

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
    _add_serve_commands(commands, common)
    _add_key_commands(commands, common)
    _add_wallet_commands(commands, common)
    _add_journal_commands(commands, common)
    add_org_commands(commands, common, _command, _sync)
    add_price_commands(commands, common, _command, _sync)
    commands.add_parser("fake-upstream", help="an OpenAI-compatible fake provider (see: meterway fake-upstream --help)")
    return parser


def _command(group: Any, name: str, help: str, **kwargs: Any) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = group.add_parser(
        name, help=help, description=help, epilog=EXIT_CODES, formatter_class=_Formatter, **kwargs)
    return sub


def _add_serve_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = _command(commands, "demo", "try Meterway now: the fake provider in-process, an embedded ledger, a funded "
                    "wallet and a key, printed with a ready curl line (ignores --config, DATABASE_URL, REDIS_URL)",
                    parents=[common])
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--port", type=int, default=8080, help="port to listen on (0 = any free port)")
    demo.add_argument("--db", default="meterway-demo.sqlite3",
                      help="the demo's SQLite ledger, relative to the working directory; kept between runs")

    serve_ = _command(commands, "serve", "run the gateway", parents=[common])
    serve_.add_argument("--workers", type=int, default=1, help="processes sharing one port (needs Postgres + Redis)")
    serve_.add_argument("--host", help="address to listen on (default: listen.host)")
    serve_.add_argument("--port", type=int, help="port to listen on (default: listen.port)")
    serve_.add_argument("--migrate", action="store_true",
                        help="apply pending database migrations before serving (without it, a Postgres schema "
                             "that is behind is refused; the embedded SQLite file is always migrated)")
    serve_.set_defaults(run=serve)

    migrate_ = _command(commands, "migrate", "apply pending database migrations and say which, and where", parents=[common])
    migrate_.set_defaults(run=migrate)


def _add_key_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    keys = _command(commands, "keys", "API keys").add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = _command(keys, "create", "create a key; prints the secret once", parents=[common])
    create.add_argument("--wallet", required=True, help="the wallet the key spends from")
    create.add_argument("--name", help="a label for people")
    create.add_argument("--bot", help="a label recorded on every usage row of this key")
    create.add_argument("--expires-at", help="when the key stops working: ISO 8601 with a timezone, e.g. 2027-01-01T00:00:00Z")
    create.add_argument("--model", action="append", dest="models", metavar="MODEL",
                        help="a model the key may call (repeat for several); default: every model served")
    create.add_argument("--bot-id", help="the wallet's bot the key belongs to: the bot's caps apply (see /api/bots)")
    for window in ("total", "daily", "monthly"):
        create.add_argument(f"--{window}-limit", metavar="USD",
                            help=f"the key's own {'lifetime' if window == 'total' else window} spend limit, e.g. 5.00")
    create.add_argument("--rpm", type=int, help="requests per minute, shared by every gateway process")
    create.add_argument("--tpm", type=int, help="tokens per minute (counted as each request ends)")
    create.add_argument("--max-parallel", type=int, help="requests in flight at once")
    create.add_argument("--ip-allow", action="append", metavar="CIDR",
                        help="an address or range the key may be used from (repeat for more)")
    create.set_defaults(run=_sync(keys_create))
    listing = _command(keys, "list", "list keys (never their secrets)", parents=[common])
    listing.add_argument("--wallet", help="only this wallet's keys")
    listing.set_defaults(run=_sync(keys_list))
    revoke = _command(keys, "revoke", "revoke a key", parents=[common])
    revoke.add_argument("key_id", help="the key's id (from keys list)")
    revoke.set_defaults(run=_sync(keys_revoke))


def _add_wallet_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    wallet = _command(commands, "wallet", "wallets").add_subparsers(dest="wallet_command", required=True, metavar="ACTION")
    w_create = _command(wallet, "create", "create a wallet", parents=[common])
    w_create.add_argument("wallet_id", help="letters, digits, _ . - (up to 64)")
    w_create.add_argument("--name", help="a label for people")
    w_create.set_defaults(run=_sync(wallet_create))
    w_credit = _command(wallet, "credit", "operator adjustment: add funds", parents=[common])
    w_credit.add_argument("wallet_id", help="the wallet to credit")
    w_credit.add_argument("amount", help="USD, e.g. 10 or 0.25")
    w_credit.add_argument("--id", dest="transfer_id", help="idempotency key (retry-safe); none = one is made and printed")
    w_credit.add_argument("--memo", help="a note kept with the transfer")
    w_credit.set_defaults(run=_sync(wallet_credit))
    w_show = _command(wallet, "show", "balance, and what the running gateway holds", parents=[common])
    w_show.add_argument("wallet_id", help="the wallet to show")
    w_show.set_defaults(run=_sync(wallet_show))
    w_tx = _command(wallet, "transactions", "the wallet's transfers, newest first", parents=[common])
    w_tx.add_argument("wallet_id", help="the wallet")
    w_tx.add_argument("--limit", type=int, default=50, help="at most this many")
    w_tx.set_defaults(run=_sync(wallet_transactions))
    w_refund = _command(wallet, "refund", "give a settled request's charge back to its wallet (once per request)",
                        parents=[common])
    w_refund.add_argument("request_id", help="the request (its X-Request-Id)")
    w_refund.add_argument("--reason", required=True, help="why, kept with the refund and shown to the wallet's owner")
    w_refund.set_defaults(run=_sync(wallet_refund))


def _add_journal_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    journal = _command(commands, "journal", "the settle journal: settlements not committed at shutdown")
    j_commands = journal.add_subparsers(dest="journal_command", required=True, metavar="ACTION")
    j_replay = _command(
        j_commands, "replay",
        "commit the journal now (idempotent: a settled request is not charged again); prints the counts",
        parents=[common])
    j_replay.set_defaults(run=_sync(journal_replay))


def _sync(fn: Callable[[Any, Settings, argparse.Namespace], Awaitable[int]]) -> Callable[[Settings, argparse.Namespace], int]:
    def run(settings: Settings, args: argparse.Namespace) -> int:
        async def with_ops() -> int:
            from gateway.money.operations import Operations
            from gateway.money.stores import open_stores

            stores = await open_stores(settings, check_redis="none")
            try:
                return await fn(Operations(stores.book, stores.holds), settings, args)
            finally:
                await stores.close()

        return asyncio.run(with_ops())

    return run

