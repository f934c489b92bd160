"""`meterway keys create|list|revoke`: API keys, each spending from one wallet."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from config.settings import Settings


async def keys_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    new, record = await ops.create_key(args.wallet, args.name, args.bot)
    print(f"id:     {record.key_id}\nwallet: {record.wallet_id}\nkey:    {new.secret}")
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
