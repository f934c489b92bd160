"""Every input the admin API takes (bodies, query parameters, path ids), as strict pydantic models.

Strict: a number is not a string, an object is not a memo, an unknown field
is a typo. Bounded: every string has a maximum length and no control
characters (Postgres refuses NUL in text; logs and terminals should never see
the others). Amounts are USD decimal strings, never JSON numbers (floats).
A failed validation becomes one OpenAI-shaped 400 naming the first bad field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from gateway.errors import ApiError, invalid_request
from ledger.book import WALLET_ID_PATTERN
from ledger.bots import BOT_NAME_MAX
from ledger.key_rules import IP_ALLOW_MAX, RATE_MAX

# Sizes of what an operator may name or write; generous, but bounded.
ID_CHARS_MAX = 128
NAME_CHARS_MAX = 200
MEMO_CHARS_MAX = 1000
TRANSACTIONS_LIMIT_MAX = 200
TRANSACTIONS_LIMIT_DEFAULT = 50

# Printable: no C0 controls (NUL included) and no DEL.
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
# A USD amount: digits, optionally a point and at most nine decimals (1 nUSD).
_USD_AMOUNT = r"^[0-9]{1,15}(\.[0-9]{1,9})?$"

WalletId = Annotated[str, StringConstraints(strict=True, pattern=WALLET_ID_PATTERN.pattern)]
# Ids we or an operator minted: key_..., invoice-7, req_... (letters, digits, _ . : -).
Identifier = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=ID_CHARS_MAX,
                                              pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")]
# An operator's idempotency key: also invoice-style ids (INV/2026/7, order#12).
TransferId = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=ID_CHARS_MAX,
                                              pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/#@+=-]*$")]
Name = Annotated[str, StringConstraints(strict=True, max_length=NAME_CHARS_MAX, pattern=_PRINTABLE)]
BotName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=BOT_NAME_MAX, pattern=_PRINTABLE)]
Memo = Annotated[str, StringConstraints(strict=True, max_length=MEMO_CHARS_MAX, pattern=_PRINTABLE)]
UsdAmount = Annotated[str, StringConstraints(strict=True, pattern=_USD_AMOUNT)]


class AdminInput(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class CreateWallet(AdminInput):
    id: WalletId
    name: Name | None = None


class Credit(AdminInput):
    amount: UsdAmount
    transfer_id: TransferId | None = None
    memo: Memo | None = None


MODELS_PER_KEY_MAX = 100
ModelName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]


class KeySpendPatch(AdminInput):
    """A key's own spend limits and traffic rules; as a PATCH, replaced whole: a limit left out is removed."""

    # Spend in USD: lifetime, per UTC day, per UTC month.
    total_limit: UsdAmount | None = None
    daily_limit: UsdAmount | None = None
    monthly_limit: UsdAmount | None = None
    # Traffic: requests and tokens per minute, requests in flight, addresses (CIDR).
    rpm: int | None = Field(None, gt=0, le=RATE_MAX)
    tpm: int | None = Field(None, gt=0, le=RATE_MAX)
    max_parallel: int | None = Field(None, gt=0, le=RATE_MAX)
    ip_allow: list[Annotated[str, StringConstraints(strict=True, min_length=1, max_length=64)]] | None = Field(
        None, min_length=1, max_length=IP_ALLOW_MAX)


class KeyLimitsInput(KeySpendPatch):
    """An inference key's limits when it is made (gateway/http/key_limits.py checks them against what is served)."""

    expires_at: datetime | None = Field(None, strict=False)  # ISO 8601 with a timezone
    models: list[ModelName] | None = Field(None, min_length=1, max_length=MODELS_PER_KEY_MAX)
    bot_id: Identifier | None = None  # the wallet's bot the key belongs to (its caps apply)

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("a time needs a timezone, e.g. 2027-01-01T00:00:00Z")
        return value


class CreateKey(KeyLimitsInput):
    wallet: WalletId
    name: Name | None = None
    bot: Name | None = None


class CreateOrg(AdminInput):
    wallet: WalletId
    name: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=NAME_CHARS_MAX, pattern=_PRINTABLE)]
    owner_name: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=NAME_CHARS_MAX,
                                                 pattern=_PRINTABLE)]


class Refund(AdminInput):
    # Required: the reason is kept with the refund and shown to the wallet's owner.
    reason: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=MEMO_CHARS_MAX, pattern=_PRINTABLE)]


class WalletPath(AdminInput):
    wallet_id: WalletId


class KeyPath(AdminInput):
    key_id: Identifier


class RequestPath(AdminInput):
    request_id: Identifier


class TransactionsQuery(AdminInput):
    # Query strings are text: lax here so "50" is 50; bounds keep a negative or
    # huge LIMIT from reaching the database.
    limit: int = Field(TRANSACTIONS_LIMIT_DEFAULT, ge=1, le=TRANSACTIONS_LIMIT_MAX, strict=False)


class KeysQuery(AdminInput):
    wallet: WalletId | None = None


Model = TypeVar("Model", bound=AdminInput)


def parse(model: type[Model], data: Any) -> Model | ApiError:
    """data -> model, or a 400 naming the first field that is wrong (never echoing its value)."""
    if not isinstance(data, dict):
        return invalid_request("The body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return _first_error(exc)


def _first_error(exc: ValidationError) -> ApiError:
    error = exc.errors(include_url=False, include_input=False)[0]
    param = ".".join(str(part) for part in error["loc"]) or None
    if error["type"] == "extra_forbidden":
        return invalid_request(f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    if error["type"] == "missing":
        return invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    rule = _RULES.get(param or "", "")
    # A regex says little to a caller: the rule in words instead.
    if error["type"] == "string_pattern_mismatch" and rule:
        reason = f"expected {rule}"
    else:
        reason = f"{error['msg']}" + (f"; expected {rule}" if rule else ".")
    return invalid_request(f"Invalid value for '{param}': {reason}", param, "invalid_value")


_WALLET_ID_RULE = "a wallet id: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit."
_ID_RULE = f"an id: 1-{ID_CHARS_MAX} letters, digits, '_', '.', ':', '-', starting with a letter or digit."
_RULES = {
    "amount": "USD as a decimal string above 0, e.g. \"10.00\", with at most 9 decimals (not a JSON number).",
    "limit": f"an integer from 1 to {TRANSACTIONS_LIMIT_MAX}.",
    "id": _WALLET_ID_RULE, "wallet": _WALLET_ID_RULE, "wallet_id": _WALLET_ID_RULE,
    "key_id": _ID_RULE, "request_id": _ID_RULE,
    "transfer_id": f"an id: 1-{ID_CHARS_MAX} letters, digits and '_ . : / # @ + = -', starting with a letter or digit.",
    "owner_name": f"a non-empty string of at most {NAME_CHARS_MAX} characters, without control characters.",
    "name": f"a string of at most {NAME_CHARS_MAX} characters, without control characters.",
    "bot": f"a string of at most {NAME_CHARS_MAX} characters, without control characters.",
    "memo": f"a string of at most {MEMO_CHARS_MAX} characters, without control characters.",
    "reason": f"a non-empty string of at most {MEMO_CHARS_MAX} characters, without control characters.",
}
