"""A key's traffic rules on the request path: admit a request (or refuse it with a 429), then finish it.

Only keys with rules pay anything here. The store is Redis's when the gateway
has one (every process shares the counts), else in-process. Rate limits are
not money: a store that cannot be reached admits the request, counted in the
meterway_rate_unchecked metric (every time) and a warning in the log (at most
once per RATE_LOG_INTERVAL_S); holds and caps still apply.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from gateway import errors
from gateway.errors import ApiError
from gateway.metrics import Metrics
from ledger.key_rules import KeyRules
from ledger.rates import Admission, Limit, RateStore, RateUnavailable

log = logging.getLogger("meterway.traffic")
RATE_LOG_INTERVAL_S = 10.0


class Traffic:
    def __init__(self, store: RateStore, slot_ttl_s: float, metrics: Metrics) -> None:
        self._store = store
        self._slot_ttl_s = slot_ttl_s
        self._metrics = metrics
        self._logged_at = float("-inf")

    async def admit(self, key_id: str, rules: KeyRules, request_id: str) -> ApiError | None:
        """None if admitted (the caller must then finish()); a 429 if a rule refuses."""
        try:
            admission = await self._store.admit(key_id, rules, request_id, self._slot_ttl_s)
        except asyncio.CancelledError:
            # The script may have run and taken a slot: give it back now, not after the slot's time to live.
            await self.finish(key_id, rules, request_id, 0)
            raise
        except RateUnavailable as exc:
            self._unchecked("admit", f"rate limits not checked (admitted): {exc}")
            return None
        if admission.admitted:
            return None
        return refusal(rules, admission)

    async def finish(self, key_id: str, rules: KeyRules, request_id: str, tokens: int) -> None:
        try:
            await asyncio.shield(self._store.finish(key_id, rules, request_id, tokens))
        except RateUnavailable as exc:
            self._unchecked("finish", f"a request's end not counted (its parallel slot expires by itself): {exc}")

    def _unchecked(self, step: str, message: str) -> None:
        self._metrics.rate_unchecked_at(step)
        now = time.monotonic()
        if now - self._logged_at >= RATE_LOG_INTERVAL_S:
            self._logged_at = now
            log.warning(message)


def refusal(rules: KeyRules, admission: Admission) -> ApiError:
    if admission.refused_by is Limit.PARALLEL:
        assert rules.parallel_max is not None
        return errors.too_many_parallel(rules.parallel_max)
    headers = rate_headers(rules, admission)
    if admission.refused_by is Limit.REQUESTS:
        assert rules.rpm is not None
        return errors.rate_limited("requests", rules.rpm, admission.requests, admission.retry_after_s, headers)
    assert admission.refused_by is Limit.TOKENS and rules.tpm is not None, admission
    return errors.rate_limited("tokens", rules.tpm, admission.tokens, admission.retry_after_s, headers)


def rate_headers(rules: KeyRules, admission: Admission) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits the key has."""
    headers: dict[str, str] = {}
    for name, limit, used in (("requests", rules.rpm, admission.requests), ("tokens", rules.tpm, admission.tokens)):
        if limit is not None:
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(limit - math.ceil(used), 0))
            headers[f"x-ratelimit-reset-{name}"] = f"{max(admission.retry_after_s, 1.0):.0f}s"
    return headers
