"""Management keys (``mwm-...``), invitation tokens and the ids of owners' records.

Like inference keys (gateway/money/keys.py): 256 random bits, stored only as
a SHA-256 hash, shown once. The prefixes differ so that neither kind of key
is mistaken for the other: ``mw-`` calls models, ``mwm-`` manages a wallet.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from gateway.money.keys import NewKey, hash_secret

MANAGEMENT_KEY_PREFIX = "mwm-"
MANAGEMENT_SECRET_PATTERN = re.compile(r"^mwm-[A-Za-z0-9_-]{43}$")
INVITE_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
DISPLAY_PREFIX_CHARS = 12

# A new secret, shown once: the same value for both kinds of key.
NewManagementKey = NewKey


@dataclass(frozen=True)
class NewInvite:
    invite_id: str
    token: str  # in the link, shown once
    token_hash: str


def generate_management_key() -> NewManagementKey:
    secret = MANAGEMENT_KEY_PREFIX + secrets.token_urlsafe(32)
    assert MANAGEMENT_SECRET_PATTERN.match(secret), secret
    return NewManagementKey(new_management_key_id(), secret, hash_secret(secret), secret[:DISPLAY_PREFIX_CHARS])


def generate_invite() -> NewInvite:
    token = secrets.token_urlsafe(32)
    return NewInvite(f"inv_{secrets.token_hex(8)}", token, hash_secret(token))


def looks_like_management_key(secret: str) -> bool:
    return MANAGEMENT_SECRET_PATTERN.match(secret) is not None


def looks_like_invite_token(token: str) -> bool:
    return INVITE_TOKEN_PATTERN.match(token) is not None


def new_member_id() -> str:
    return f"mem_{secrets.token_hex(8)}"


def new_management_key_id() -> str:
    return f"mk_{secrets.token_hex(8)}"
