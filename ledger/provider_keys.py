"""Provider keys a wallet (or one of its bots) brings: what the book promises, both dialects.

The book keeps each key sealed (the gateway seals and opens it:
gateway/money/secrets_box.py) with its last four characters as a hint, and
never sees it in clear. A wallet has at most one live key per bot (or none)
and provider: storing another revokes the one before, in the same
transaction. Keys are revoked, never deleted, so a key's row outlives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ledger.errors import LedgerError

LAST4_CHARS = 4
PROVIDER_NAME_MAX = 100


class ProviderKeyLimit(LedgerError):
    """The wallet holds as many live provider keys as it may (byok.keys_per_wallet_max)."""

    code = "provider_key_limit"


@dataclass(frozen=True)
class ProviderKeyRecord:
    key_id: str
    wallet_id: str
    bot_id: str | None  # None: every call of the wallet; else its bot's calls only, and it wins there
    provider: str  # a [providers] name of the configuration
    sealed: str  # the sealed key (never the key itself)
    last4: str  # the key's last four characters, its only part shown
    created_at: str | None = None
    revoked_at: str | None = None

    def __post_init__(self) -> None:
        assert 0 < len(self.provider) <= PROVIDER_NAME_MAX, self.provider
        assert len(self.last4) <= LAST4_CHARS, "a hint is at most four characters"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def __repr__(self) -> str:  # short, and the sealed value stays out of logs and tracebacks
        return f"ProviderKeyRecord({self.key_id!r}, {self.wallet_id!r}, bot={self.bot_id!r}, {self.provider!r})"


@runtime_checkable
class ProviderKeys(Protocol):
    async def store_provider_key(self, key: ProviderKeyRecord, keys_max: int) -> ProviderKeyRecord:
        """Store a live key, revoking the wallet's live key for the same bot and provider.

        UnknownAccount if there is no such wallet; ProviderKeyLimit if the wallet
        would hold more than keys_max live keys.
        """
        ...

    async def provider_keys(self, wallet_id: str) -> list[ProviderKeyRecord]:
        """The wallet's live keys, oldest first."""
        ...

    async def revoke_provider_key(self, wallet_id: str, key_id: str) -> bool:
        """False if the wallet has no such live key."""
        ...
