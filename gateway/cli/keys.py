"""`meterway keys create|list|revoke`: API keys, each spending from one wallet."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from ledger.api_keys import SpendLimits
from ledger.money import format_usd, parse_usd
from ledger.times import utc_text


async def keys_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    expires_at, models = _limits(args, settings)
    spend = _spend_limits(args)
    new, record = await ops.create_key(args.wallet, args.name, args.bot, expires_at=expires_at, allowed_models=models,
                                       bot_id=args.bot_id, limits=spend)
    print(f"id:     {record.key_id}\nwallet: {record.wallet_id}\nkey:    {new.secret}")
    if expires_at or models:
        print(f"limits: expires {expires_at or 'never'}; models {', '.join(models) if models else 'all'}")
    if spend is not None:
        print("spend:  " + ", ".join(f"{name} ${format_usd(v)}" for name, v in (
            ("lifetime", spend.total_nusd), ("daily", spend.day_nusd), ("monthly", spend.month_nusd)) if v is not None))
    if record.bot_id:
        print(f"bot:    {record.bot_id} ({record.bot})")
    print("Store the key now: it is shown only once.", file=sys.stderr)
    return 0


async def keys_list(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    for k in await ops.book.list_keys(args.wallet):
        state = "revoked" if k.revoked_at else "active"
        print(f"{k.key_id}\t{k.prefix}…\t{k.wallet_id}\t{k.name or '-'}\t{k.bot or '-'}\t{state}")
    return 0


async def keys_revoke(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    if not await ops.book.revoke_key(args.key_id):
        print(f"meterway: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id} (other running gateways drop it within {settings.limits.key_cache_ttl_s:g} s)")
    return 0


def _spend_limits(args: argparse.Namespace) -> SpendLimits | None:
    """--total-limit, --daily-limit, --monthly-limit in USD (a MoneyFormatError, a ValueError, is exit 1)."""
    def nusd(usd: str | None) -> int | None:
        return None if usd is None else parse_usd(usd)

    limits = SpendLimits(total_nusd=nusd(args.total_limit), day_nusd=nusd(args.daily_limit),
                         month_nusd=nusd(args.monthly_limit))
    return limits if limits.any else None


def _limits(args: argparse.Namespace, settings: Settings) -> tuple[str | None, tuple[str, ...] | None]:
    """--expires-at and --model, checked as the APIs check them (a ValueError is exit 1 with its message)."""
    expires_at = None
    if args.expires_at:
        when = datetime.fromisoformat(args.expires_at)
        if when.tzinfo is None:
            raise ValueError("--expires-at needs a timezone, e.g. 2027-01-01T00:00:00Z")
        if when <= datetime.now(UTC):
            raise ValueError("--expires-at must be in the future")
        expires_at = utc_text(when.astimezone(UTC))
    models = None
    if args.models:
        unknown = sorted(set(args.models) - set(settings.models))
        if unknown:
            raise ValueError(f"unknown model {unknown[0]!r}: the models served are {', '.join(sorted(settings.models))}")
        models = tuple(dict.fromkeys(args.models))
    return expires_at, models
