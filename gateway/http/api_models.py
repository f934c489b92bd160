"""Every input the wallet API (/api) takes, as strict pydantic models (the style of admin_models.py).

Query strings are text, so their integers are parsed laxly and bounded; an
out-of-range or non-integer limit is a 400 naming "limit", never a clamp.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from gateway.http.admin_models import AdminInput, BotName, Identifier, KeyLimitsInput, Name, UsdAmount, parse
from ledger.bots import FRIENDLY_MESSAGE_MAX
from ledger.history import ENTRIES_LIMIT_MAX
from ledger.owners import Role
from ledger.webhooks import ATTEMPTS_PAGE_MAX, EVENT_TYPES

__all__ = ["parse"]
LIMIT_DEFAULT = 50
CURSOR_CHARS_MAX = 512
WEBHOOK_URL_CHARS_MAX = 2048


class ApiInput(AdminInput):
    pass


class Page(ApiInput):
    limit: int = Field(LIMIT_DEFAULT, ge=1, le=ENTRIES_LIMIT_MAX, strict=False)
    cursor: str | None = Field(None, min_length=1, max_length=CURSOR_CHARS_MAX)


class DepositsQuery(Page):
    session_id: str | None = Field(None, min_length=1, max_length=255)  # one deposit, by its Checkout Session


class TransactionsQuery(Page):
    type: str | None = Field(None, max_length=1000)
    from_: datetime | None = Field(None, alias="from", strict=False)
    to: datetime | None = Field(None, strict=False)

    @field_validator("from_", "to")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("a time needs a timezone, e.g. 2026-11-01T00:00:00Z")
        return value

    def kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in (self.type or "").split(",") if k.strip())


class WalletSettingsPatch(ApiInput):
    low_balance_threshold: UsdAmount | None


class CreateKey(KeyLimitsInput):
    name: Name | None = None
    bot: Name | None = None


FriendlyMessage = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=FRIENDLY_MESSAGE_MAX)]


class BotPatch(ApiInput):
    """A bot's caps in USD (None: no cap) and its friendly answer (None: refuse with a 402)."""

    daily_cap: UsdAmount | None = None
    monthly_cap: UsdAmount | None = None
    conversation_cap: UsdAmount | None = None
    friendly_message: FriendlyMessage | None = None


class CreateBot(BotPatch):
    name: BotName


class Invite(ApiInput):
    name: Name = Field(min_length=1)
    role: Role = Field(strict=False)


class MemberPatch(ApiInput):
    role: Role | None = Field(None, strict=False)
    monthly_limit: UsdAmount | None = None


class Accept(ApiInput):
    name: Name | None = None


class CreateManagementKey(ApiInput):
    name: Name | None = None


class IdPath(ApiInput):
    id: Identifier


class CreateProviderKey(ApiInput):
    """A provider key to store (BYOK): checked by gateway/money/byok.py's rule, never echoed."""

    provider: Identifier  # a [providers] name of the gateway's configuration
    api_key: str = Field(min_length=1, max_length=4096)
    bot_id: Identifier | None = None  # set: only this bot's calls use it, and it wins over the wallet's key


class TokenPath(ApiInput):
    token: str = Field(min_length=1, max_length=100)


class CreateWebhook(ApiInput):
    url: str = Field(min_length=1, max_length=WEBHOOK_URL_CHARS_MAX)
    events: list[Literal[EVENT_TYPES]] = Field(min_length=1, max_length=len(EVENT_TYPES))  # type: ignore[valid-type]


class CreateAlert(ApiInput):
    """A balance alert: an absolute threshold in USD, or a share (percent) of the last top-up."""

    threshold: UsdAmount | None = None
    share_percent: int | None = Field(None, ge=1, le=100)


class DeliveriesQuery(ApiInput):
    limit: int = Field(LIMIT_DEFAULT, ge=1, le=ATTEMPTS_PAGE_MAX, strict=False)
