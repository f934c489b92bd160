"""A key's traffic rules: which addresses may use it, how fast, and how many requests at once.

Not money, so they live beside the key rather than in the hold store: an IP
allow-list in CIDR, requests and tokens per minute (shared by every gateway
process through Redis, ledger/redis_rates.py) and a ceiling on parallel
requests. None in a field: no rule of that kind.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IP_ALLOW_MAX = 100  # CIDR entries per key
RATE_MAX = 1_000_000_000  # requests or tokens per minute, and parallel requests


def parse_cidrs(given: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """CIDRs (or single addresses) in their normal form; ValueError names the first bad one."""
    if not 0 < len(given) <= IP_ALLOW_MAX:
        raise ValueError(f"an IP allow-list has 1 to {IP_ALLOW_MAX} entries")
    networks = []
    for entry in given:
        try:
            networks.append(str(ipaddress.ip_network(entry.strip(), strict=False)))
        except ValueError as exc:
            raise ValueError(f"not an IP address or CIDR range: {entry!r}") from exc
    return tuple(dict.fromkeys(networks))


@dataclass(frozen=True)
class KeyRules:
    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens per minute (prompt + completion, counted when each request ends)
    parallel_max: int | None = None  # requests in flight at once
    ip_allow: tuple[str, ...] | None = None  # CIDRs in normal form (parse_cidrs)

    def __post_init__(self) -> None:
        for value in (self.rpm, self.tpm, self.parallel_max):
            assert value is None or 0 < value <= RATE_MAX, self

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.parallel_max, self.ip_allow))

    @property
    def limits_traffic(self) -> bool:
        """Whether a request must be admitted (and then finished) by the rate store."""
        return self.rpm is not None or self.tpm is not None or self.parallel_max is not None

    @functools.cached_property
    def networks(self) -> tuple[IpNetwork, ...]:
        """The allow-list parsed once per cached key: it is checked on every request."""
        return tuple(ipaddress.ip_network(n) for n in self.ip_allow or ())

    def allows(self, address: str | None) -> bool:
        if self.ip_allow is None:
            return True
        if address is None:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 to an IPv4 rule
        return any(ip in network for network in self.networks)

    def ip_allow_json(self) -> str | None:
        return None if self.ip_allow is None else json.dumps(list(self.ip_allow))


def rules_from_row(rpm: int | None, tpm: int | None, parallel_max: int | None, ip_allow: str | None) -> KeyRules | None:
    rules = KeyRules(rpm, tpm, parallel_max, None if ip_allow is None else tuple(json.loads(ip_allow)))
    return rules if rules.any else None
