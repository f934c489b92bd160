"""Settings of a key's traffic rules: where client addresses come from, and the rate store's bounds."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field, field_validator

TRUSTED_PROXIES_MAX = 100


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrafficSettings(_Frozen):
    """[traffic]: IP allow-lists, requests and tokens per minute, parallel requests (README, Key limits)."""

    # Peers whose X-Forwarded-For is believed (CIDRs: your load balancer). The client is then the
    # right-most address of that header that is not itself a trusted proxy. Empty: the peer, always.
    trusted_proxies: list[str] = Field(default_factory=list, max_length=TRUSTED_PROXIES_MAX)
    # Each rate check is one Redis round trip, given up after this (the request is then admitted).
    rate_timeout_s: float = Field(0.5, gt=0, le=10)
    # A parallel-request slot outlives a crashed process by at most this long.
    parallel_slot_ttl_s: float = Field(900.0, gt=0, le=86_400)
    # X-Forwarded-For headers longer than this are not read (the peer is used).
    forwarded_for_chars_max: int = Field(2048, gt=0, le=65_536)

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an IP address or CIDR range: {entry!r}") from exc
        return value

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(entry, strict=False) for entry in self.trusted_proxies)
