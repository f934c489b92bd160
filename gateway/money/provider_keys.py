"""Stored provider keys on the gateway's side: sealing one to store it, and the cache the request path reads.

The book keeps each key sealed (gateway/money/secrets_box.py) and never sees
it in clear. StoredKeys keeps, per wallet, its live keys opened, for
byok.cache_ttl_s: the request path reads no database for a wallet it has seen
lately, whether the wallet has keys or, as most have, none. A change through
the wallet API is announced (gateway/http/notices.py) and forgotten here at
once, in every process. While the ledger cannot be read, a wallet's last
known keys are used rather than none: a BYOK wallet is never silently
charged the full price because of an outage.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.money.secrets_box import BoxUnavailable, SecretsBox, Unreadable
from ledger.errors import LedgerError
from ledger.provider_keys import LAST4_CHARS, ProviderKeyRecord, ProviderKeys

KEY_ID_PREFIX = "pk_"


def seal_context(key_id: str, wallet_id: str, bot_id: str | None, provider: str) -> str:
    """What a sealed key is bound to: opened on any other row (or wallet, bot, provider) it fails."""
    return "\0".join((key_id, wallet_id, bot_id or "", provider))


def last4(secret: str) -> str:
    return secret[-LAST4_CHARS:] if len(secret) >= 2 * LAST4_CHARS else ""  # a short key shows nothing


def sealed_record(box: SecretsBox, wallet_id: str, bot_id: str | None, provider: str,
                  secret: str) -> ProviderKeyRecord:
    key_id = f"{KEY_ID_PREFIX}{secrets.token_hex(12)}"
    sealed = box.seal(secret, seal_context(key_id, wallet_id, bot_id, provider))
    return ProviderKeyRecord(key_id, wallet_id, bot_id, provider, sealed, last4(secret))


@dataclass(frozen=True, repr=False)
class OpenedKey:
    """A stored key, opened for the request path: the secret, or why it cannot be read."""

    key_id: str
    bot_id: str | None
    provider: str
    secret: str | Unreadable

    def __repr__(self) -> str:
        return f"OpenedKey({self.key_id!r}, bot={self.bot_id!r}, {self.provider!r})"


def open_record(box: SecretsBox | BoxUnavailable, record: ProviderKeyRecord) -> OpenedKey:
    if isinstance(box, BoxUnavailable):
        secret: str | Unreadable = Unreadable(box.reason)
    else:
        secret = box.open(record.sealed, seal_context(record.key_id, record.wallet_id, record.bot_id, record.provider))
    return OpenedKey(record.key_id, record.bot_id, record.provider, secret)


def choose(keys: tuple[OpenedKey, ...], bot_id: str | None, provider: str) -> OpenedKey | None:
    """The key for a call: its bot's own key for the provider wins, else the wallet's."""
    wallet_key = None
    for key in keys:
        if key.provider != provider:
            continue
        if bot_id is not None and key.bot_id == bot_id:
            return key
        if key.bot_id is None:
            wallet_key = key
    return wallet_key


class StoredKeys:
    """wallet id -> its live keys, opened; bounded, and refreshed after ttl_s."""

    def __init__(self, book: ProviderKeys, box: SecretsBox | BoxUnavailable, ttl_s: float, entries_max: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._book = book
        self.box = box
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._clock = clock
        self._entries: dict[str, tuple[float, tuple[OpenedKey, ...]]] = {}

    def known_none(self, wallet_id: str) -> bool:
        """Whether the wallet is known, lately, to have no key (the plain path's one check)."""
        cached = self._entries.get(wallet_id)
        return cached is not None and not cached[1] and cached[0] > self._clock()

    async def of(self, wallet_id: str) -> tuple[OpenedKey, ...]:
        """The wallet's live keys; LedgerError only when they were never read and cannot be now."""
        now = self._clock()
        cached = self._entries.get(wallet_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            records = await self._book.provider_keys(wallet_id)
        except LedgerError:
            if cached is None:
                raise
            return cached[1]  # the last known keys: better than charging a BYOK wallet in full
        keys = tuple(open_record(self.box, record) for record in records)
        if len(self._entries) >= self._entries_max and wallet_id not in self._entries:
            self._entries.clear()  # bounded; the next requests read their wallets again
        self._entries[wallet_id] = (now + self._ttl_s, keys)
        return keys

    def forget(self, wallet_id: str) -> None:
        self._entries.pop(wallet_id, None)

    def forget_all(self) -> None:
        self._entries.clear()
