"""`meterway orgs create|show`: a wallet's organisation, its first owner and that owner's management key."""

from __future__ import annotations

import argparse
from typing import Any

from config.settings import Settings
from ledger.money import format_usd


async def orgs_create(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    from gateway.money.wallet_owners import WalletOwners

    org, owner, new = await WalletOwners(ops.book, ops.holds, settings.wallet).create_org(
        args.wallet_id, args.name, args.owner_name)
    print(f"created organisation {org.name!r} for wallet {org.wallet_id}; owner {owner.name} ({owner.member_id})")
    print(f"management key (shown once, keep it secret): {new.secret}")
    return 0


async def orgs_show(ops: Any, settings: Settings, args: argparse.Namespace) -> int:
    org = await ops.book.org(args.wallet_id)
    if org is None:
        print(f"no organisation for wallet {args.wallet_id!r} (meterway orgs create {args.wallet_id} ...)")
        return 1
    low = "default" if org.low_balance_nusd is None else f"{format_usd(org.low_balance_nusd)} USD"
    print(f"organisation: {org.name}\nwallet:       {org.wallet_id}\ncreated:      {org.created_at}\n"
          f"low warning:  {low}")
    for m in await ops.book.list_members(org.wallet_id):
        limit = "" if m.monthly_limit_nusd is None else f", limit {format_usd(m.monthly_limit_nusd)} USD/month"
        print(f"  {m.member_id}  {m.role.value:<9}  {m.status.value:<7}  {m.name}{limit}")
    return 0


def add_org_commands(commands: Any, common: argparse.ArgumentParser, command: Any, sync: Any) -> None:
    orgs = command(commands, "orgs", "organisations: who owns a wallet").add_subparsers(
        dest="orgs_command", required=True, metavar="ACTION")
    create = command(orgs, "create", "create a wallet's organisation and its first owner; prints the owner's "
                     "management key once", parents=[common])
    create.add_argument("wallet_id", help="the wallet (created if missing)")
    create.add_argument("--name", required=True, help="the organisation's name")
    create.add_argument("--owner-name", required=True, help="the first owner's name")
    create.set_defaults(run=sync(orgs_create))
    show = command(orgs, "show", "an organisation and its members", parents=[common])
    show.add_argument("wallet_id", help="the wallet")
    show.set_defaults(run=sync(orgs_show))
