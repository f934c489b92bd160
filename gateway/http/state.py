"""What the app holds for its lifetime, built once in gateway/http/app.py.

Handlers take what they need from it; the layers below are handed narrow
collaborators (a Book, a HoldStore, a Billing), never this bag.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from config.settings import Settings
from gateway.http.auth import KeyCache
from gateway.http.notices import Notices
from gateway.http.proxy import Proxy
from gateway.metrics import Metrics
from gateway.money.byok import ByokKeys
from gateway.money.calls import Route
from gateway.money.secrets_box import BoxUnavailable, SecretsBox
from gateway.money.settlement import Settler
from gateway.money.topups import Payments
from gateway.upstream import Upstream
from ledger.holds import HoldStore
from ledger.store import LedgerStore


@dataclass(frozen=True)
class GatewayState:
    settings: Settings
    book: LedgerStore
    holds: HoldStore
    settler: Settler
    keys: KeyCache
    upstream: Upstream
    metrics: Metrics
    routes: dict[str, Route]
    proxy: Proxy
    notices: Notices  # cache notices to every process (keys, bots, members, provider keys)
    byok: ByokKeys  # which provider key a call goes with; the stored keys' cache and sealing box
    box: SecretsBox | BoxUnavailable  # the master key: seals provider keys and webhook secrets
    payments: Payments | None = None  # card top-ups, when [stripe] is enabled


STATE = web.AppKey("meterway_state", GatewayState)
