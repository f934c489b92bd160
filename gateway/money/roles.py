"""What each role may do, as data: the permission table of the wallet API (/api).

The names follow Assisters: owner, developer, viewer ("admin" stays the
operator's). A handler names the permission it needs; a role does nothing
beyond what this table grants (tests/test_api_permissions.py checks every role
against every endpoint). "Own" permissions are scoped by the handler to the
caller's member id.
"""

from __future__ import annotations

import enum

from ledger.owners import Role


class Permission(str, enum.Enum):
    READ_WALLET = "read_wallet"  # the overview
    MANAGE_WALLET_SETTINGS = "manage_wallet_settings"
    READ_ALL_USAGE = "read_all_usage"  # every transaction of the wallet
    READ_OWN_USAGE = "read_own_usage"  # usage of the caller's own keys
    READ_DEPOSITS = "read_deposits"
    READ_ALL_KEYS = "read_all_keys"
    MANAGE_ALL_KEYS = "manage_all_keys"
    MANAGE_OWN_KEYS = "manage_own_keys"  # create, list and revoke its own inference keys
    READ_MEMBERS = "read_members"
    READ_SELF = "read_self"  # its own member record
    MANAGE_MEMBERS = "manage_members"  # invite, change roles and limits, remove
    MANAGE_OWN_MANAGEMENT_KEYS = "manage_own_management_keys"
    TOP_UP = "top_up"  # buy credit by card, set auto-reload (owners only: it spends the card)
    READ_BOTS = "read_bots"  # the wallet's bots and their caps (developers give their keys to bots)
    MANAGE_BOTS = "manage_bots"  # create bots, set their caps and friendly answer, delete them
    READ_WEBHOOKS = "read_webhooks"  # webhook endpoints (never their secrets), deliveries, balance alerts
    MANAGE_WEBHOOKS = "manage_webhooks"  # register and remove endpoints and alerts
    READ_PROVIDER_KEYS = "read_provider_keys"  # the wallet's stored provider keys, masked (BYOK)
    MANAGE_PROVIDER_KEYS = "manage_provider_keys"  # store and revoke them (owners only: they spend elsewhere)


_READS = frozenset({Permission.READ_WALLET, Permission.READ_ALL_USAGE, Permission.READ_OWN_USAGE,
                    Permission.READ_DEPOSITS, Permission.READ_ALL_KEYS, Permission.READ_MEMBERS,
                    Permission.READ_SELF, Permission.READ_BOTS, Permission.READ_PROVIDER_KEYS,
                    Permission.READ_WEBHOOKS})

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.OWNER: frozenset(Permission),
    Role.DEVELOPER: frozenset({Permission.READ_WALLET, Permission.READ_OWN_USAGE, Permission.MANAGE_OWN_KEYS,
                               Permission.READ_SELF, Permission.MANAGE_OWN_MANAGEMENT_KEYS, Permission.READ_BOTS,
                               Permission.READ_PROVIDER_KEYS}),
    Role.VIEWER: _READS | {Permission.MANAGE_OWN_MANAGEMENT_KEYS},
}


def allows(role: Role, permission: Permission) -> bool:
    return permission in ROLE_PERMISSIONS[role]
