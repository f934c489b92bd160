"""Choosing the stores: SQLite + in-process holds (embedded) or Postgres + Redis.

Each third-party client is created here and handed to the ledger, which never
imports aiohttp, and only ledger/redis_*.py import redis.

Opening the stores is also where a start is refused, with a message that says
what to do: a database that cannot be reached, a Postgres schema that is
behind (migrating production is an explicit step, `meterway migrate`), a Redis
that cannot be reached or that may evict keys.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from config.settings import Settings
from ledger.book import Book
from ledger.errors import LedgerError
from ledger.holds import HoldStore
from ledger.inprocess_holds import InProcessHolds
from ledger.rates import InProcessRates, RateStore
from ledger.store import LedgerStore

if TYPE_CHECKING:
    from ledger.redis_notices import RedisNotices

log = logging.getLogger("meterway.backends")

# Exit codes of `meterway`, one per class of expected failure (README, --help).
EXIT_REFUSED = 1  # the operation was refused: unknown wallet, conflicting id, bad amount
EXIT_USAGE = 2  # a bad argument, or a config file that is missing or invalid
EXIT_DATABASE_DOWN = 3  # the ledger database cannot be reached
EXIT_REDIS_DOWN = 4  # Redis cannot be reached
EXIT_SCHEMA_BEHIND = 5  # the database needs `meterway migrate`
EXIT_REDIS_POLICY = 6  # Redis may evict keys (maxmemory-policy is not noeviction)
EXIT_CANNOT_LISTEN = 7  # the listen address is taken or not allowed


class StartupError(Exception):
    """An expected reason not to start; the message says what to do."""

    exit_code = EXIT_REFUSED


class DatabaseUnavailable(StartupError):
    exit_code = EXIT_DATABASE_DOWN


class RedisUnavailable(StartupError):
    exit_code = EXIT_REDIS_DOWN


class SchemaBehind(StartupError):
    exit_code = EXIT_SCHEMA_BEHIND


class RedisEvicts(StartupError):
    exit_code = EXIT_REDIS_POLICY


@dataclass(frozen=True)
class Stores:
    book: LedgerStore
    holds: HoldStore

    async def close(self) -> None:
        await self.holds.close()
        await self.book.close()


def describe_database(settings: Settings) -> str:
    """Where the ledger lives, with no password: for messages and the start summary."""
    if settings.database_url is None:
        return f"SQLite {settings.sqlite_path} (embedded)"
    return f"Postgres {_redacted(settings.database_url)}"


def describe_holds(settings: Settings) -> str:
    if settings.redis_url is None:
        return "in-process (this process only; held amounts are known to the running gateway alone)"
    return f"Redis {_redacted(settings.redis_url)} prefix {settings.redis_prefix!r}"


def _redacted(url: str) -> str:
    """host:port/db (user, but never the password or query secrets)."""
    parts = urlsplit(url)
    user = f"{unquote(parts.username)}@" if parts.username else ""
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    # The schema matters (tests and some deployments select it in the URL); other options may hold secrets.
    schema = [v for k, v in parse_qsl(parts.query) if k == "search_path"][:1]
    return f"{parts.scheme}://{user}{host}{port}{parts.path or '/'}" + (f" (search_path {schema[0]})" if schema else "")


async def open_book(settings: Settings) -> LedgerStore:
    if settings.database_url:
        from ledger.postgres_book import PostgresBook

        try:
            return await PostgresBook.connect(settings.database_url, pool_max=settings.limits.db_pool_max)
        except LedgerError as exc:
            raise DatabaseUnavailable(f"cannot open the ledger at {describe_database(settings)}: {exc}") from exc
    from ledger.sqlite_book import SqliteBook

    return SqliteBook(settings.sqlite_path)


async def prepare_schema(book: Book, settings: Settings) -> None:
    """Embedded: migrate (a file nobody else shares). Postgres: refuse a schema that is behind."""
    try:
        if settings.embedded:
            await book.migrate()
            return
        pending = await book.pending_migrations()
    except LedgerError as exc:
        raise DatabaseUnavailable(f"cannot read the ledger at {describe_database(settings)}: {exc}") from exc
    if pending:
        versions = ", ".join(f"{v:04d}" for v in pending)
        raise SchemaBehind(
            f"the database {describe_database(settings)} needs migrations {versions}; "
            "run `meterway migrate` (or start with `meterway serve --migrate`)")


# How much of Redis to check when opening the hold store:
#   "full"          down or evicting: refuse (`meterway serve`, before any worker starts)
#   "if_reachable"  evicting: refuse; down: start anyway, /readyz says 503 until it is back (a worker)
#   "none"          the operator's commands: the ledger is the truth, the mirror heals itself
RedisCheck = Literal["full", "if_reachable", "none"]


async def open_holds(settings: Settings, *, check: RedisCheck = "if_reachable") -> HoldStore:
    if settings.redis_url:
        import redis.asyncio as aioredis

        from ledger.redis_holds import RedisHolds

        limits = settings.limits
        # No per-command socket timeout: RedisHolds puts one deadline on each
        # pipeline, which costs far less than one per command.
        client = aioredis.from_url(settings.redis_url, socket_connect_timeout=limits.redis_timeout_s)
        if check != "none":
            try:
                await check_redis(client, settings)
            except RedisUnavailable as exc:
                if check == "full":
                    await client.aclose()
                    raise
                log.warning("%s; starting anyway, not ready until it answers (GET /readyz)", exc)
            except BaseException:
                await client.aclose()
                raise
        return RedisHolds(client, prefix=settings.redis_prefix, close_client=True,
                          pipeline_max=limits.redis_pipeline_max, timeout_s=limits.redis_timeout_s,
                          grace_s=limits.redis_recovery_grace_s)
    return InProcessHolds()


def rate_store(holds: HoldStore, timeout_s: float) -> RateStore:
    """Where keys' rate counts live: the hold store's Redis (shared by every process), else this process."""
    from ledger.redis_holds import RedisHolds
    from ledger.redis_rates import RedisRates

    if isinstance(holds, RedisHolds):
        return RedisRates(holds.client, holds.prefix, timeout_s)
    return InProcessRates()


def notice_bus(holds: HoldStore, timeout_s: float) -> RedisNotices | None:
    """Where cache notices go between processes: the hold store's Redis, on its prefix; embedded: nowhere."""
    from ledger.redis_holds import RedisHolds
    from ledger.redis_notices import RedisNotices

    if not isinstance(holds, RedisHolds):
        return None
    return RedisNotices(holds.client, f"{holds.prefix}:notices", timeout_s)


async def check_redis(client: Any, settings: Settings) -> None:
    """Reachable, and never evicting: an evicted hold or mirror key would let a wallet overspend."""
    import redis.exceptions

    where = describe_holds(settings)
    try:
        policy = await asyncio.wait_for(client.config_get("maxmemory-policy"), settings.limits.redis_timeout_s)
    except redis.exceptions.ResponseError as exc:
        # CONFIG is often renamed or disabled on managed Redis: we cannot see the policy.
        if not settings.redis_policy_check:
            return
        raise RedisEvicts(
            f"cannot read maxmemory-policy of {where} ({exc}). Meterway needs `maxmemory-policy noeviction`; "
            "if CONFIG is disabled on purpose and you have checked the policy yourself, "
            "set redis_policy_check = false (MW_REDIS_POLICY_CHECK=false)") from exc
    except (TimeoutError, OSError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise RedisUnavailable(f"cannot reach {where}: {exc or type(exc).__name__}") from exc
    value = _decoded(policy.get("maxmemory-policy", policy.get(b"maxmemory-policy")))
    if value != "noeviction":
        raise RedisEvicts(
            f"{where} runs with maxmemory-policy {value!r}: under memory pressure it would evict holds and "
            "let wallets overspend. Set `maxmemory-policy noeviction` (redis-cli config set maxmemory-policy "
            "noeviction, and in redis.conf)")


def _decoded(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def open_stores(settings: Settings, *, check_redis: RedisCheck = "if_reachable") -> Stores:
    """The book (schema checked; migrated if embedded) and the hold store (Redis checked: see RedisCheck)."""
    book = await open_book(settings)
    try:
        await prepare_schema(book, settings)
        holds = await open_holds(settings, check=check_redis)
    except BaseException:
        await book.close()
        raise
    return Stores(book, holds)


async def migrate(settings: Settings) -> list[int]:
    """Apply the pending migrations (the explicit step for Postgres); returns the versions applied."""
    book = await open_book(settings)
    try:
        return await book.migrate()
    except LedgerError as exc:
        raise DatabaseUnavailable(f"cannot migrate the ledger at {describe_database(settings)}: {exc}") from exc
    finally:
        await book.close()
