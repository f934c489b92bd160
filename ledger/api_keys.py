"""An inference key as the book keeps it, with the limits every request with it is checked against.

A key may belong to a member (whose monthly limit applies), to a bot (whose
daily, monthly and per-conversation caps apply, and whose friendly answer
replaces a refusal), and may carry spend limits of its own: lifetime, daily
and monthly. key_by_hash() joins the member's and the bot's figures, so the
request path reads one row.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime

from ledger.key_rules import KeyRules


@dataclass(frozen=True)
class SpendLimits:
    """Limits in nUSD; None: no limit in that window. Windows are UTC calendar days and months."""

    total_nusd: int | None = None  # a key's lifetime spend
    day_nusd: int | None = None
    month_nusd: int | None = None
    conversation_nusd: int | None = None  # a bot's, per X-Conversation-Id

    def __post_init__(self) -> None:
        for value in (self.total_nusd, self.day_nusd, self.month_nusd, self.conversation_nusd):
            assert value is None or value >= 0, self

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.total_nusd, self.day_nusd, self.month_nusd, self.conversation_nusd))


@dataclass(frozen=True)
class BotRule:
    """What a key's bot adds to each of its requests (read with the key)."""

    bot_id: str
    caps: SpendLimits  # day, month, conversation
    friendly_message: str | None = None  # set: a refusal is answered with it, free


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    secret_hash: str
    prefix: str  # the first characters of the secret, safe to show
    wallet_id: str
    name: str | None
    bot: str | None  # a label, shown on usage rows: the bot's name when the key belongs to one
    created_at: str | None = None
    revoked_at: str | None = None
    # Its member (ledger/owners.py) and that member's monthly limit as read (key_by_hash joins it).
    member_id: str | None = None
    member_limit_nusd: int | None = None
    expires_at: str | None = None  # ISO 8601 UTC; None: never (migration 0006)
    allowed_models: tuple[str, ...] | None = None  # None: every model the gateway serves
    limits: SpendLimits | None = None  # the key's own: lifetime, day, month (migration 0007)
    bot_rule: BotRule | None = None  # its bot, if it belongs to one (migration 0007)
    rules: KeyRules | None = None  # IP allow-list, requests and tokens per minute, parallel requests (0008)

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    @property
    def bot_id(self) -> str | None:
        return None if self.bot_rule is None else self.bot_rule.bot_id

    @functools.cached_property
    def expires_epoch(self) -> float:
        """expires_at as epoch seconds (inf: never), parsed once per cached record: it is checked per request."""
        return math.inf if self.expires_at is None else datetime.fromisoformat(self.expires_at).timestamp()
