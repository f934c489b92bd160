"""Who is calling, by address: the peer, or behind trusted proxies the client their X-Forwarded-For names.

X-Forwarded-For is written by the client first and each proxy after it, so
only the entries added by proxies we trust can be believed: walking from the
right, the first address that is not a trusted proxy is the client. Without
trusted proxies the header is never read (a client could write anything).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.Request, trusted: Sequence[IpNetwork], header_chars_max: int) -> str | None:
    peer = request.remote
    if not trusted or peer is None or not _within(peer, trusted):
        return peer
    forwarded = request.headers.getall("X-Forwarded-For", [])
    chain = ",".join(forwarded)
    if not chain or len(chain) > header_chars_max:
        return peer
    for hop in reversed([part.strip() for part in chain.split(",")]):
        if not _within(hop, trusted):
            return hop if _parses(hop) else None  # a garbled hop is nobody: no allow-list admits it
    return peer  # every hop is one of ours


def _within(address: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def _parses(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True
