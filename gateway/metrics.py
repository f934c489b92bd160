"""Prometheus metrics: the four that make the core observable.

Each app owns its registry, so several apps in one process (tests) stay apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

# Buckets around the overhead we aim for (sub-millisecond) and what would be bad.
OVERHEAD_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    tokens: Counter
    charged_nusd: Counter
    shortfall_nusd: Counter
    overhead_seconds: Histogram
    holds_expired: Counter
    rate_unchecked: Counter
    # metric.labels(...) costs a lock and a dict build; the hot path asks for the same few.
    _children: dict[tuple[str, tuple[str, ...]], Any] = field(default_factory=dict)

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("meterway_requests", "Requests by endpoint and outcome.", ["endpoint", "outcome"], registry=registry),
            tokens=Counter("meterway_tokens", "Tokens metered, by model and kind (prompt, cached, completion).", ["model", "kind"], registry=registry),
            charged_nusd=Counter("meterway_charged_nusd", "Money charged to wallets, in nano-USD.", ["model"], registry=registry),
            shortfall_nusd=Counter("meterway_shortfall_nusd", "Usage cost no wallet could cover, in nano-USD.", ["model"], registry=registry),
            overhead_seconds=Histogram(
                "meterway_overhead_seconds", "Latency the gateway adds: total time minus time waiting on the upstream.",
                ["endpoint"], buckets=OVERHEAD_BUCKETS_S, registry=registry,
            ),
            holds_expired=Counter("meterway_holds_expired", "Holds released by expiry (nobody settled them).", registry=registry),
            rate_unchecked=Counter(
                "meterway_rate_unchecked", "Key rate checks skipped because the rate store was unreachable (admit: "
                "the request was let in unchecked; finish: its slot and tokens were not recorded).", ["step"],
                registry=registry,
            ),
        )

    def record(self, endpoint: str, outcome: str, overhead_s: float) -> None:
        self._child(self.requests, endpoint, outcome).inc()
        self._child(self.overhead_seconds, endpoint).observe(overhead_s)

    def refused(self, endpoint: str, status: int) -> None:
        self._child(self.requests, endpoint, f"refused_{status}").inc()

    def record_usage(self, model: str, prompt_uncached: int, cached: int, completion: int, charged_nusd: int) -> None:
        self._child(self.tokens, model, "prompt").inc(prompt_uncached)
        self._child(self.tokens, model, "cached").inc(cached)
        self._child(self.tokens, model, "completion").inc(completion)
        self._child(self.charged_nusd, model).inc(charged_nusd)

    def rate_unchecked_at(self, step: str) -> None:
        self._child(self.rate_unchecked, step).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
