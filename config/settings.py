"""Meterway's configuration: one TOML file plus environment overrides.

Precedence, highest first: environment (``MW_...``, nested with ``__``, plus the
conventional ``DATABASE_URL``/``REDIS_URL``), then the TOML file, then the
defaults below. Everything is validated once, at start, so a bad price or a
missing provider is a clear message instead of a failure on the first request.
"""

from __future__ import annotations

import os
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from config.byok import ByokSettings
from config.payments import StripeSettings, TopupSettings
from config.pricing import ModelPrice
from config.traffic import TrafficSettings
from config.webhooks import WebhookSettings
from ledger.money import MoneyFormatError, parse_usd

EXAMPLE_CONFIG_PATH = Path(__file__).with_name("example.toml")


class ConfigError(Exception):
    """The configuration cannot be used; the message says what to change."""


# A bearer token (admin, metrics) guards money or revenue figures: an empty one
# would match an empty header, a short one can be guessed.
TOKEN_CHARS_MIN = 32
TOKEN_CHARS_MAX = 1024
TOKEN_DISTINCT_CHARS_MIN = 8


def check_token(field: str, token: SecretStr | None) -> SecretStr | None:
    """None (feature off) or a strong token; the message never repeats the value."""
    if token is None:
        return None
    value = token.get_secret_value()
    advice = f"set 32+ random characters (e.g. `openssl rand -hex 32`), or leave {field} unset"
    if not value.strip():
        raise ValueError(f"{field} is empty: {advice}")
    if len(value) < TOKEN_CHARS_MIN:
        raise ValueError(f"{field} is too weak ({len(value)} characters): {advice}")
    if len(value) > TOKEN_CHARS_MAX:
        raise ValueError(f"{field} is longer than {TOKEN_CHARS_MAX} characters")
    if not value.isascii() or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{field} must be printable ASCII without spaces (it travels in an HTTP header)")
    if len(set(value)) < TOKEN_DISTINCT_CHARS_MIN:
        raise ValueError(f"{field} is too weak (fewer than {TOKEN_DISTINCT_CHARS_MIN} distinct characters): {advice}")
    return token


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Listen(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class Provider(_Frozen):
    """An upstream that speaks the OpenAI HTTP API."""

    base_url: str = Field(description="Up to and including /v1, e.g. https://api.openai.com/v1")
    # Keys are read from the environment so the config file can be committed.
    api_key_env: str | None = None
    api_key: SecretStr | None = None
    models: tuple[str, ...] = ()

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return value.rstrip("/")

    def resolve_api_key(self) -> str | None:
        if self.api_key is not None:
            return self.api_key.get_secret_value()
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


class ModelConfig(_Frozen):
    """Price and limits of one model. Prices are USD decimal strings."""

    input_per_1m: Decimal = Decimal(0)
    cached_input_per_1m: Decimal | None = None  # defaults to the input price
    output_per_1m: Decimal = Decimal(0)
    per_call: Decimal = Decimal(0)
    max_output_tokens: int = Field(4096, gt=0)
    # The tokenizer used when the upstream reports no usage (both load from installed packages, never
    # downloaded; "bytes" counts UTF-8 bytes, a safe over-estimate); None = infer from the model's name.
    encoding: Literal["cl100k_base", "o200k_base", "bytes"] | None = None
    kind: str = Field("chat", pattern="^(chat|completion|embedding)$")
    # Image input in prompt tokens (gateway/media.py): `detail: low` costs the
    # base, else base + tile x 512px tiles. None = OpenAI's published figures
    # for the model's name (gpt-4o-mini 2833/5667, o1/o3 75/150, else 85/170).
    image_base_tokens: int | None = Field(None, ge=0)
    image_tile_tokens: int | None = Field(None, ge=0)
    # Held per image, and billed for an image of unknown size (by URL); None =
    # base + 8 tiles, the most the tile rule can reach (never set below it).
    image_tokens_max: int | None = Field(None, ge=0)
    # Audio input: tokens per second of audio, and the lowest byte rate of an
    # accepted format (MP3 at 8 kbit/s), which bounds a clip's duration by its size.
    audio_tokens_per_second: int = Field(10, ge=0)
    audio_bytes_per_second_min: int = Field(1000, gt=0)
    # A `file` part (PDF, inline or by file_id) has no size we can know: held,
    # and billed when usage must be counted, at this many tokens each (default:
    # the largest context window, ~1M, which no request's input can exceed).
    file_tokens_max: int = Field(1_000_000, ge=0)

    def price(self) -> ModelPrice:
        try:
            input_nusd = parse_usd(self.input_per_1m)
            cached = self.cached_input_per_1m
            return ModelPrice(
                input_per_1m_nusd=input_nusd,
                cached_input_per_1m_nusd=input_nusd if cached is None else parse_usd(cached),
                output_per_1m_nusd=parse_usd(self.output_per_1m),
                per_call_nusd=parse_usd(self.per_call),
            )
        except MoneyFormatError as exc:
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _prices_are_exact(self) -> ModelConfig:
        self.price()
        return self


class Limits(_Frozen):
    """Every queue, timeout and size in one place, with its unit in its name."""

    hold_ttl_s: float = Field(660.0, gt=0)
    upstream_connect_timeout_s: float = Field(10.0, gt=0)
    upstream_total_timeout_s: float = Field(600.0, gt=0)
    upstream_connections_max: int = Field(1024, gt=0)
    body_bytes_max: int = Field(4 * 1024 * 1024, gt=0)
    requests_in_flight_max: int = Field(4096, gt=0)
    stream_event_bytes_max: int = Field(4 * 1024 * 1024, gt=0)
    settle_batch_max: int = Field(256, gt=0)
    settle_queue_max: int = Field(20_000, gt=0)
    settle_retry_max: int = Field(5, ge=0)
    settle_retry_delay_s: float = Field(0.2, ge=0)
    # Back-off between retries of settlements the ledger refused for now
    # (doubling from settle_retry_delay_s) never grows past this.
    settle_retry_delay_max_s: float = Field(5.0, gt=0)
    # Settlements waiting for the ledger to come back, at most; while full,
    # new requests are refused with 503 before any upstream work is done.
    settle_retry_queue_max: int = Field(20_000, gt=0)
    # A request waits at most this long for its settlement; after it, the
    # answer goes out without a cost header and the settlement goes on.
    settle_wait_max_s: float = Field(10.0, gt=0)
    # /readyz reports the settler stuck once a queued settlement is this old.
    settle_stuck_after_s: float = Field(30.0, gt=0)
    # At shutdown, pending settlements get this long to commit; the rest are
    # appended to the settle journal and committed at the next start.
    settle_shutdown_timeout_s: float = Field(10.0, ge=0)
    # Each /readyz check (ledger, hold store) answers within this or fails.
    ready_check_timeout_s: float = Field(1.0, gt=0)
    key_cache_ttl_s: float = Field(5.0, ge=0)
    # The price catalogue (`meterway prices import`) is read again this often by every process.
    price_refresh_s: float = Field(30.0, gt=0, le=3600)
    # X-Conversation-Id (a bot's per-conversation cap) is at most this long.
    conversation_id_chars_max: int = Field(128, gt=0, le=1024)
    # A refused wallet is re-read from the book at most this often, so a
    # top-up made by another process is seen without flooding the database.
    wallet_refresh_interval_s: float = Field(1.0, ge=0)
    key_cache_entries_max: int = Field(100_000, gt=0)
    expiry_sweep_interval_s: float = Field(1.0, gt=0)
    expiry_sweep_batch_max: int = Field(256, gt=0)
    db_pool_max: int = Field(10, gt=0)
    redis_timeout_s: float = Field(5.0, gt=0)
    redis_pipeline_max: int = Field(256, gt=0)
    # Redis data loss (FLUSHDB, a restart without persistence): each gateway
    # checks the hold store's generation this often and, when it changed,
    # re-registers its open holds (ledger/redis_recovery.py). No new hold is
    # granted under a generation younger than the grace, so every live
    # gateway has re-registered first; it must exceed the heartbeat interval
    # plus redis_timeout_s. A brand-new Redis (first deploy) pays it once.
    redis_heartbeat_interval_s: float = Field(0.25, gt=0)
    redis_recovery_grace_s: float = Field(6.0, gt=0)
    # Sanity bound on each token count of one request (prompt, cached,
    # completion). Usage reported above it is recorded capped and flagged
    # (usage_source "upstream_capped"), never refused after the work is done.
    usage_tokens_max: int = Field(100_000_000, gt=0)
    # A hold the body's byte bound cannot get is retried with a tighter count;
    # that count tokenizes at most this many bytes of text (the rest is bounded
    # by its byte length), so a refused request costs bounded CPU (~1 ms per 32 KiB).
    tokenize_bytes_max: int = Field(32 * 1024, ge=0)
    shutdown_timeout_s: float = Field(30.0, ge=0)

    @model_validator(mode="after")
    def _hold_outlives_request(self) -> Limits:
        # A hold must never expire under a request that is still running,
        # or the wallet could be spent twice.
        if self.hold_ttl_s <= self.upstream_total_timeout_s:
            raise ValueError("limits.hold_ttl_s must exceed limits.upstream_total_timeout_s")
        # A gateway that has not re-registered its holds yet must not be
        # overtaken by new grants elsewhere after Redis lost its data.
        if self.redis_recovery_grace_s <= self.redis_heartbeat_interval_s + self.redis_timeout_s:
            raise ValueError("limits.redis_recovery_grace_s must exceed "
                             "limits.redis_heartbeat_interval_s + limits.redis_timeout_s")
        return self


class DisplayUnit(_Frozen):
    """Amounts also shown in a unit of the operator's choosing, e.g. "$1 = 10,000 credits"."""

    name: str = Field(min_length=1, max_length=32)
    per_usd: int = Field(gt=0, le=10**9)


class WalletSettings(_Frozen):
    """What wallet owners see (the /api wallet API): warning thresholds, display unit, invitations."""

    low_balance_usd: str = "5"  # default "low" warning; an org may set its own
    critical_balance_usd: str = "1"
    display_unit: DisplayUnit | None = None
    invite_ttl_s: float = Field(7 * 24 * 3600.0, ge=60, le=90 * 24 * 3600)
    # None: invitation links are built from the request's scheme and host
    public_base_url: str | None = None
    management_key_cache_ttl_s: float = Field(1.0, ge=0, le=60)

    @field_validator("public_base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("public_base_url must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _thresholds(self) -> WalletSettings:
        try:
            low, critical = parse_usd(self.low_balance_usd), parse_usd(self.critical_balance_usd)
        except MoneyFormatError as exc:
            raise ValueError(f"wallet thresholds: {exc}") from exc
        if not 0 < critical < low:
            raise ValueError("wallet: 0 < critical_balance_usd < low_balance_usd is required")
        return self

    @property
    def low_balance_nusd(self) -> int:
        return parse_usd(self.low_balance_usd)

    @property
    def critical_balance_nusd(self) -> int:
        return parse_usd(self.critical_balance_usd)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MW_", env_nested_delimiter="__", extra="forbid", frozen=True, populate_by_name=True
    )

    listen: Listen = Listen()
    database_url: str | None = Field(None, validation_alias=AliasChoices("DATABASE_URL", "MW_DATABASE_URL"))
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "MW_REDIS_URL"))
    sqlite_path: str = "meterway.sqlite3"
    # Settlements not committed at shutdown go here (one file per process);
    # None = "meterway-journal.jsonl" next to sqlite_path. See journal_path.
    settle_journal_path: str | None = None
    redis_prefix: str = "mw"
    # Refuse to start when Redis's maxmemory-policy cannot be read (CONFIG
    # disabled, as on some managed Redis). false = you checked it is noeviction.
    redis_policy_check: bool = True
    # Enables /admin/*; unset = /admin/* is a 404. Empty or weak: refused at start.
    admin_token: SecretStr | None = None
    # Set: GET /metrics needs `Authorization: Bearer <metrics_token>`. Unset: /metrics is open.
    metrics_token: SecretStr | None = None
    providers: dict[str, Provider] = {}
    models: dict[str, ModelConfig] = {}
    limits: Limits = Limits()
    wallet: WalletSettings = WalletSettings()
    stripe: StripeSettings = StripeSettings()  # card top-ups (config/payments.py)
    topup: TopupSettings = TopupSettings()
    traffic: TrafficSettings = TrafficSettings()  # a key's traffic rules (config/traffic.py)
    webhooks: WebhookSettings = WebhookSettings()  # delivering events to owners (config/webhooks.py)
    byok: ByokSettings = ByokSettings()  # bring your own provider key (config/byok.py)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)

    @field_validator("admin_token", "metrics_token")
    @classmethod
    def _strong_token(cls, token: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        return check_token(str(info.field_name), token)

    @model_validator(mode="after")
    def _models_have_providers(self) -> Settings:
        for name, provider in self.providers.items():
            for model in provider.models:
                if model not in self.models:
                    raise ValueError(f"provider {name!r} serves model {model!r}, which has no price in [models]")
        served = {m for p in self.providers.values() for m in p.models}
        unserved = sorted(set(self.models) - served)
        if unserved:
            raise ValueError(f"models {unserved} are priced but no provider serves them")
        if self.redis_url and not self.database_url:
            raise ValueError("REDIS_URL needs DATABASE_URL too: holds in Redis need a shared ledger")
        return self

    @property
    def embedded(self) -> bool:
        return self.database_url is None

    @property
    def journal_path(self) -> str:
        if self.settle_journal_path:
            return self.settle_journal_path
        return str(Path(self.sqlite_path).with_name("meterway-journal.jsonl"))

    def provider_of(self, model: str) -> tuple[str, Provider] | None:
        for name, provider in self.providers.items():
            if model in provider.models:
                return name, provider
        return None


# File paths among the settings. Relative ones in a config file (and the
# default sqlite_path, when a config file is given) are taken from the config
# file's directory, so the CLI run from anywhere opens the same ledger.
PATH_SETTINGS = ("sqlite_path", "settle_journal_path")


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply the environment, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except IsADirectoryError as exc:
            raise ConfigError(f"config file {path} is a directory") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        data = _paths_from(Path(path).resolve().parent, data)
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        # from None: pydantic's own rendering repeats input values, and a refused token is still a secret.
        raise ConfigError(_describe(exc, path)) from None


def _paths_from(base: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Relative file paths of the config file, made absolute against its directory.

    Paths from the environment (MW_SQLITE_PATH=...) stay as given: relative to
    the working directory, as a shell user expects."""
    resolved = dict(data)
    resolved.setdefault("sqlite_path", Settings.model_fields["sqlite_path"].default)
    for name in PATH_SETTINGS:
        value = resolved.get(name)
        if isinstance(value, str) and value:
            path = Path(value).expanduser()
            resolved[name] = str(path if path.is_absolute() else base / path)
    return resolved


def _describe(exc: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {location}: {error['msg']}")
    return "\n".join(lines)
