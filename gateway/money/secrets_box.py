"""Encryption at rest for stored provider keys: AES-256-GCM under a master key from the environment.

    box = secrets_box(settings.byok)          # a SecretsBox, or BoxUnavailable(reason)
    sealed = box.seal("sk-...", context)      # "mwk1.<key id>.<base64url(nonce | ciphertext | tag)>"
    box.open(sealed, context)                 # "sk-...", or Unreadable(reason)

The master key is 32 random bytes, given base64 (standard or URL-safe) or as
64 hex digits in MW_MASTER_KEY; make one with `openssl rand -base64 32`.
Each sealed value names the master key it was sealed with (the first 8 hex
digits of a hash of it, never the key), so rotation is a matter of
configuration: the new key in MW_MASTER_KEY seals, and the old ones in
MW_MASTER_KEY_OLD (comma-separated) still open what they sealed.

The context (the stored key's id, wallet and provider) is authenticated with
the ciphertext (GCM's associated data): a sealed value copied onto another
row, or another wallet's, does not open. A missing, empty or malformed
master key is a value, never an exception at start: the gateway serves
everything else, and storing a key answers with the reason. `cryptography`
is imported here and nowhere else; its errors become values here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config.byok import ByokSettings

MASTER_KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # GCM's standard nonce: random per seal (2^32 seals per key stay far from a collision)
SEALED_PREFIX = "mwk1"
KEY_ID_HEX_CHARS = 8
SEALED_CHARS_MAX = 16_384  # a sealed value longer than this is not ours
GENERATE_HINT = "make one with `openssl rand -base64 32`"


@dataclass(frozen=True)
class BoxUnavailable:
    """No usable master key: nothing can be stored, nothing stored can be read. The reason names no secret."""

    reason: str


@dataclass(frozen=True)
class Unreadable:
    """A sealed value that does not open: another master key, a damaged value, or another row's."""

    reason: str


def parse_master_key(text: str | None, variable: str) -> bytes | BoxUnavailable:
    """32 bytes from base64 or hex text; the reason never repeats the text."""
    if text is None or not text.strip():
        return BoxUnavailable(f"{variable} is not set: {GENERATE_HINT}")
    given = text.strip()
    if len(given) == 2 * MASTER_KEY_BYTES and all(c in "0123456789abcdefABCDEF" for c in given):
        return bytes.fromhex(given)
    try:
        padded = given + "=" * (-len(given) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return BoxUnavailable(f"{variable} is not base64 or hex: {GENERATE_HINT}")
    if len(raw) != MASTER_KEY_BYTES:
        return BoxUnavailable(f"{variable} holds {len(raw)} bytes, not {MASTER_KEY_BYTES}: {GENERATE_HINT}")
    return raw


def key_id(master_key: bytes) -> str:
    return hashlib.sha256(b"meterway master key id\0" + master_key).hexdigest()[:KEY_ID_HEX_CHARS]


class SecretsBox:
    def __init__(self, current: bytes, old: Sequence[bytes] = ()) -> None:
        assert len(current) == MASTER_KEY_BYTES and all(len(k) == MASTER_KEY_BYTES for k in old)
        self.key_id = key_id(current)
        self._current = AESGCM(current)
        self._by_id = {key_id(k): AESGCM(k) for k in old}
        self._by_id[self.key_id] = self._current

    def seal(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._current.encrypt(nonce, plaintext.encode(), context.encode())
        return f"{SEALED_PREFIX}.{self.key_id}.{base64.urlsafe_b64encode(sealed).decode()}"

    def open(self, sealed: str, context: str) -> str | Unreadable:
        parts = sealed.split(".") if len(sealed) <= SEALED_CHARS_MAX else []
        if len(parts) != 3 or parts[0] != SEALED_PREFIX:
            return Unreadable("not a value sealed by Meterway")
        cipher = self._by_id.get(parts[1])
        if cipher is None:
            return Unreadable(f"sealed with master key {parts[1]}, which is neither MW_MASTER_KEY nor in MW_MASTER_KEY_OLD")
        try:
            raw = base64.urlsafe_b64decode(parts[2])
            if len(raw) <= NONCE_BYTES:
                return Unreadable("a sealed value too short to hold a key")
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (binascii.Error, ValueError):
            return Unreadable("a damaged sealed value")
        except InvalidTag:
            return Unreadable("the sealed value does not open with its master key here (damaged, or another row's)")

    def __repr__(self) -> str:
        return f"SecretsBox(key_id={self.key_id!r}, keys={len(self._by_id)})"


def secrets_box(settings: ByokSettings) -> SecretsBox | BoxUnavailable:
    """The box for the configured master key(s), or why there is none."""
    current = parse_master_key(settings.master_key_text(), settings.master_key_env)
    if isinstance(current, BoxUnavailable):
        return current
    old: list[bytes] = []
    for text in settings.old_master_key_texts():
        parsed = parse_master_key(text, settings.master_key_old_env)
        if isinstance(parsed, BoxUnavailable):
            return parsed
        old.append(parsed)
    return SecretsBox(current, old)
