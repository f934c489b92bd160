"""Who is calling: Bearer key -> key record, with a small in-process cache.

The cache keeps the hot path free of database round trips. A change made
through the gateway (a revocation, new limits, a bot's caps) takes effect at
once here and, through Redis notices (notices.py), in every other process; one
made around it (the CLI) within limits.key_cache_ttl_s. Unknown keys are cached too, so a flood
of bad keys cannot turn into a flood of queries.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from pydantic import SecretStr

from gateway.errors import ApiError, invalid_api_key, key_expired
from gateway.http.notices import Notice, Subject
from gateway.http.responses import refusal_error
from gateway.money.billing import Refusal, Refused
from gateway.money.keys import hash_secret, looks_like_key
from ledger.book import ApiKeyRecord, Book
from ledger.errors import LedgerError

log = logging.getLogger("meterway.auth")


class KeyCache:
    def __init__(self, book: Book, ttl_s: float, entries_max: int) -> None:
        self._book = book
        self._ttl_s = ttl_s
        self._entries_max = entries_max
        self._entries: OrderedDict[str, tuple[float, ApiKeyRecord | None]] = OrderedDict()

    async def lookup(self, secret_hash: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        cached = self._entries.get(secret_hash)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = await self._book.key_by_hash(secret_hash)
        self._entries[secret_hash] = (now + self._ttl_s, record)
        self._entries.move_to_end(secret_hash)
        while len(self._entries) > self._entries_max:
            self._entries.popitem(last=False)
        return record

    def forget(self, key_id: str) -> None:
        self._forget_where(lambda record: record.key_id == key_id)

    def hear(self, notice: Notice) -> None:
        """A key, its bot or its member changed (here or in another process): read it again from the book."""
        if notice.subject is Subject.ALL:
            self._entries.clear()
        elif notice.subject is Subject.KEY:
            self.forget(notice.subject_id)
        elif notice.subject is Subject.BOT:
            self._forget_where(lambda record: record.bot_id == notice.subject_id)
        elif notice.subject is Subject.MEMBER:
            self._forget_where(lambda record: record.member_id == notice.subject_id)

    def _forget_where(self, matches: Callable[[ApiKeyRecord], bool]) -> None:
        for secret_hash, (_, record) in list(self._entries.items()):
            if record is not None and matches(record):
                del self._entries[secret_hash]


def bearer_secret(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None


def bearer_matches(authorization: str | None, token: SecretStr | None) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time. No token configured: nothing matches.

    aiohttp hands over non-UTF-8 header bytes as surrogates, which cannot be
    encoded back; our tokens are printable ASCII, so anything else is simply wrong.
    """
    given = bearer_secret(authorization)
    if token is None or given is None or not given.isascii():
        return False
    expected = token.get_secret_value().encode()
    return bool(expected) and hmac.compare_digest(given.encode(), expected)


async def authenticate(cache: KeyCache, authorization: str | None) -> ApiKeyRecord | ApiError:
    secret = bearer_secret(authorization)
    if secret is None:
        return invalid_api_key("You didn't provide an API key. Send it as 'Authorization: Bearer mw-...'.")
    if not looks_like_key(secret):
        return invalid_api_key("Incorrect API key provided: it is not a Meterway key.")
    try:
        record = await cache.lookup(hash_secret(secret))
    except LedgerError as exc:
        # A key not cached yet cannot be checked while the ledger is down: say
        # so (retryable), rather than a 500 or a wrong "invalid key".
        log.warning("key lookup failed: %s", exc)
        return refusal_error(Refused(Refusal.LEDGER_UNAVAILABLE))
    if record is None:
        return invalid_api_key()
    if not record.active:
        return invalid_api_key("This API key has been revoked.")
    if record.expires_at is not None and time.time() >= record.expires_epoch:
        return key_expired(record.expires_at)
    return record
