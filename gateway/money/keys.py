"""API keys: random secrets with a recognisable prefix, stored only as a hash.

The secret carries 256 random bits, so a single SHA-256 is enough: there is
nothing to brute-force, unlike a password, and it keeps the lookup at
microseconds on the hot path.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "mw-"
SECRET_PATTERN = re.compile(r"^mw-[A-Za-z0-9_-]{43}$")
DISPLAY_PREFIX_CHARS = 10


@dataclass(frozen=True)
class NewKey:
    key_id: str
    secret: str  # shown once, never stored
    secret_hash: str
    display_prefix: str


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    assert SECRET_PATTERN.match(secret), secret
    return NewKey(f"key_{secrets.token_hex(8)}", secret, hash_secret(secret), secret[:DISPLAY_PREFIX_CHARS])


def looks_like_key(secret: str) -> bool:
    return SECRET_PATTERN.match(secret) is not None
