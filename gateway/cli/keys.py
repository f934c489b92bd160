"""`meterway keys create|list|revoke`: API keys, each spending from one wallet."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from config.settings import Settings
from ledger.api_keys import SpendLimits
from ledger.key_rules import RATE_MAX, KeyRules, parse_cidrs
from ledger.money import format_usd, parse_usd
from ledger.times import utc_text


async def keys_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    expires_at, models = _limits(args, settings)
    spend = _spend_limits(args)
    rules = _rules(args)
    new, record = await ops.create_key(args.wallet, args.name, args.bot, expires_at=expires_at, allowed_models=models,
                                       bot_id=args.bot_id, limits=spend, rules=rules)
    print(f"id:     {record.key_id}\nwallet: {record.wallet_id}\nkey:    {new.secret}")
    if expires_at or models:
        print(f"limits: expires {expires_at or 'never'}; models {', '.join(models) if models else 'all'}")
    if spend is not None:
        print("spend:  " + ", ".join(f"{name} ${format_usd(v)}" for name, v in (
            ("lifetime", spend.total_nusd), ("daily", spend.day_nusd), ("monthly", spend.month_nusd)) if v is not None))
    if rules is not None:
        print(f"rules:  rpm {rules.rpm or '-'}, tpm {rules.tpm or '-'}, parallel {rules.parallel_max or '-'}, "
              f"from {', '.join(rules.ip_allow) if rules.ip_allow else 'anywhere'}")
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


def _rules(args: argparse.Namespace) -> KeyRules | None:
    """--rpm, --tpm, --max-parallel, --ip-allow (a ValueError is exit 1 with its message)."""
    for name in ("rpm", "tpm", "max_parallel"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= RATE_MAX:
            raise ValueError(f"--{name.replace('_', '-')} must be between 1 and {RATE_MAX}")
    ip_allow = None if not args.ip_allow else parse_cidrs(args.ip_allow)
    rules = KeyRules(args.rpm, args.tpm, args.max_parallel, ip_allow)
    return rules if rules.any else None


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
