"""Settings for money coming in by card: `[stripe]` (the connection) and `[topup]` (tiers, bounds, validity).

Stripe's secret key and webhook secret are read from the environment only
(`STRIPE_SECRET_KEY`, `STRIPE_WEBHOOK_SECRET` by default), never from the
config file, so a committed config holds no secret. With `enabled = true`
and either one missing or empty, the gateway refuses to start.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from ledger.money import MoneyFormatError, parse_usd

NUSD_PER_CENT = 10**7
SECRET_FIELDS = ("secret_key", "webhook_secret")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StripeSettings(_Frozen):
    enabled: bool = False
    api_base: str = "https://api.stripe.com"  # tests and the demo point it at the local fake
    secret_key_env: str = "STRIPE_SECRET_KEY"  # the environment variable holding sk_...
    webhook_secret_env: str = "STRIPE_WEBHOOK_SECRET"  # ... and the one holding whsec_...
    webhook_tolerance_s: int = Field(300, ge=1, le=3600)  # the stripe library's default: 5 minutes
    webhook_bytes_max: int = Field(256 * 1024, gt=0)
    timeout_s: float = Field(10.0, gt=0, le=120)
    max_retries: int = Field(2, ge=0, le=5)  # the stripe library's retries, under one idempotency key
    # Where Checkout may send the buyer back: scheme://host[:port], exactly.
    allowed_origins: tuple[str, ...] = ()
    currency: Literal["usd"] = "usd"
    checkout_expires_s: int = Field(1800, ge=1800, le=86400)  # Stripe accepts 30 minutes to 24 hours
    product_name: str = Field("Meterway credits", min_length=1, max_length=120)
    _secret_key: SecretStr | None = PrivateAttr(None)
    _webhook_secret: SecretStr | None = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_the_file(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in SECRET_FIELDS:
                if name in data:
                    env = data.get(f"{name}_env") or f"STRIPE_{name.upper()}"
                    raise ValueError(f"stripe.{name} must not be in the config file: set the environment variable {env}")
        return data

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_origin(o) for o in origins)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("stripe.api_base must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secrets_from_the_environment(self) -> StripeSettings:
        if not self.enabled:
            return self
        for name, env in (("_secret_key", self.secret_key_env), ("_webhook_secret", self.webhook_secret_env)):
            value = os.environ.get(env, "")
            if not value.strip():
                raise ValueError(f"stripe.enabled is true but the environment variable {env} is "
                                 f"{'empty' if env in os.environ else 'missing'}: set it, or disable [stripe]")
            setattr(self, name, SecretStr(value.strip()))
        return self

    @property
    def secret_key(self) -> SecretStr | None:
        return self._secret_key

    @property
    def webhook_secret(self) -> SecretStr | None:
        return self._webhook_secret

    def secrets(self) -> list[str]:
        """The values the log redactor must hide."""
        return [s.get_secret_value() for s in (self._secret_key, self._webhook_secret) if s is not None]


class TierSettings(_Frozen):
    id: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")
    amount_usd: str
    discount_percent: Decimal = Field(ge=0, lt=100)

    @property
    def amount_nusd(self) -> int:
        return _whole_cents(self.amount_usd, f"tier {self.id}")


def _aisa_tiers() -> tuple[TierSettings, ...]:
    return tuple(TierSettings(id=usd, amount_usd=usd, discount_percent=Decimal(pct))
                 for usd, pct in (("50", "5"), ("100", "5"), ("200", "10"), ("500", "15"), ("1000", "20")))


class TopupSettings(_Frozen):
    min_usd: str = "5"  # the smallest custom amount (Aerostack: 5)
    max_usd: str = "1000"  # the largest custom amount (Aerostack: 500)
    tiers: tuple[TierSettings, ...] = Field(default_factory=_aisa_tiers)
    # A custom amount earns the discount of the largest tier it reaches ($75 gets the $50 tier's 5 %).
    custom_amounts_earn_tiers: bool = True
    auto_reload_min_usd: str = "5"
    auto_reload_refresh_s: float = Field(5.0, gt=0, le=300)  # how stale a process's view of reload settings may be
    auto_reload_tasks_max: int = Field(64, gt=0)  # reloads one process may run at once
    credit_validity_days: int | None = Field(None, ge=1, le=3650)  # None: purchased credit never expires
    credit_expiry_sweep_s: float = Field(60.0, gt=0, le=3600)  # how late past its date expired credit may leave
    credit_expiry_batch_max: int = Field(1000, gt=0)  # lots one sweep expires at most

    @model_validator(mode="after")
    def _bounds(self) -> TopupSettings:
        least, most = _whole_cents(self.min_usd, "topup.min_usd"), _whole_cents(self.max_usd, "topup.max_usd")
        if not 0 < least <= most:
            raise ValueError("topup: 0 < min_usd <= max_usd is required")
        if not 0 < _whole_cents(self.auto_reload_min_usd, "topup.auto_reload_min_usd") <= most:
            raise ValueError("topup: 0 < auto_reload_min_usd <= max_usd is required")
        ids = [t.id for t in self.tiers]
        if len(set(ids)) != len(ids):
            raise ValueError(f"topup.tiers: tier ids must be unique, got {ids}")
        for tier in self.tiers:
            tier.amount_nusd  # noqa: B018 (validates the amount)
        return self

    @property
    def min_nusd(self) -> int:
        return parse_usd(self.min_usd)

    @property
    def max_nusd(self) -> int:
        return parse_usd(self.max_usd)

    @property
    def auto_reload_min_nusd(self) -> int:
        return parse_usd(self.auto_reload_min_usd)


def _whole_cents(usd: str, field: str) -> int:
    try:
        amount = parse_usd(usd)
    except MoneyFormatError as exc:
        raise ValueError(f"{field}: {exc}") from exc
    if amount <= 0 or amount % NUSD_PER_CENT:
        raise ValueError(f"{field} must be a positive amount in whole cents, got {usd!r}")
    return amount


def _origin(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"stripe.allowed_origins: {value!r} is not an origin like https://app.example.com")
    return f"{parts.scheme}://{parts.hostname.lower()}" + (f":{parts.port}" if parts.port is not None else "")
