"""Settings for bring-your-own-key calls: `[byok]` (the fee, the header, the master key's variables).

A BYOK call is forwarded with the caller's own provider key, from the
`X-Provider-Api-Key` header or stored encrypted for its wallet (or its bot).
The wallet pays a fee of `fee_bps` basis points of the provider cost (0: the
call is free and needs no balance). Stored keys are encrypted with a master
key read from the environment only (`MW_MASTER_KEY`, and `MW_MASTER_KEY_OLD`
while rotating), never from the config file: a committed config holds no
secret. The master key is checked when it is used (storing or reading a key),
so a gateway without one starts and serves every call that stores nothing.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

BASIS_POINTS_PER_WHOLE = 10_000  # 500 bps = 5%


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ByokSettings(_Frozen):
    # The fee, in basis points of the provider cost (500 = 5%, OpenRouter's), rounded up to the nUSD.
    fee_bps: int = Field(0, ge=0, le=BASIS_POINTS_PER_WHOLE)
    # false: a request's X-Provider-Api-Key is refused (400); stored keys still apply.
    header_enabled: bool = True
    # A provider key (header or stored) is 1 to this many printable ASCII characters.
    key_chars_max: int = Field(512, ge=16, le=4096)
    # Stored keys per wallet, at most (every bot and provider together).
    keys_per_wallet_max: int = Field(50, gt=0, le=1000)
    # A stored key changed elsewhere is seen within this (cache notices make it immediate).
    cache_ttl_s: float = Field(5.0, ge=0, le=300)
    cache_entries_max: int = Field(100_000, gt=0)
    # Where the master key is read from: 32 random bytes, base64 (`openssl rand -base64 32`).
    master_key_env: str = "MW_MASTER_KEY"
    # While rotating: the previous master key(s), comma-separated; read only, never written with.
    master_key_old_env: str = "MW_MASTER_KEY_OLD"

    @model_validator(mode="before")
    @classmethod
    def _no_secret_in_the_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("master_key" in data or "master_key_old" in data):
            raise ValueError("byok.master_key must not be in the config file: set the environment variable "
                             f"{data.get('master_key_env') or 'MW_MASTER_KEY'}")
        return data

    def master_key_text(self) -> str | None:
        """The current master key as given (not checked here: gateway/money/secrets_box.py does)."""
        return os.environ.get(self.master_key_env)

    def old_master_key_texts(self) -> list[str]:
        given = os.environ.get(self.master_key_old_env) or ""
        return [part.strip() for part in given.split(",") if part.strip()]

    def secrets(self) -> list[str]:
        """The master keys' values, for log redaction."""
        found = [self.master_key_text() or "", *self.old_master_key_texts()]
        return [value for value in found if value.strip()]
