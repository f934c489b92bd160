"""Rate limits on a key: requests and tokens per minute, and requests in flight; the store's contract.

The window is a sliding minute estimated from two fixed ones (the count of the
current minute, plus the previous minute's weighted by the share of it still
inside the sliding window): O(1) state per key, within a few percent of an
exact log, and the same arithmetic in Redis (redis_rates.py) and here.

- Requests per minute are counted when a request is admitted.
- Tokens per minute are counted when a request ends, with the tokens it
  really used (neither the prompt's size nor max_tokens is known exactly
  before): a key under its limit is admitted, so the limit can be passed by
  at most the tokens of the requests already in flight when it was reached.
- Parallel requests: each admitted request takes a slot until it ends, or
  until the slot's time to live passes (a crashed process frees its slots).

Rate limits are not money: when the store cannot be reached, the request is
admitted (fail open) and the caller logs it; holds and caps still apply.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ledger.key_rules import KeyRules

WINDOW_S = 60.0
KEYS_TRACKED_MAX = 100_000  # in-process: keys with state kept at once (the idlest are dropped first)


class RateUnavailable(Exception):
    """The rate store could not be reached: the caller admits the request and says so in its log."""


class Limit(enum.Enum):
    REQUESTS = "requests"
    TOKENS = "tokens"
    PARALLEL = "parallel"


@dataclass(frozen=True)
class Admission:
    admitted: bool
    refused_by: Limit | None = None
    retry_after_s: float = 0.0  # for a refusal: when asking again may succeed
    requests: float = 0.0  # the sliding minute's requests (with this one, when admitted)
    tokens: float = 0.0  # the sliding minute's tokens
    reset_s: float = 0.0  # until the current fixed minute ends


def sliding(previous: float, current: float, elapsed: float) -> float:
    """The sliding minute's count, `elapsed` (0..1) into the current fixed minute."""
    return previous * (1.0 - elapsed) + current


def wait_s(previous: float, current: float, elapsed: float, limit: float) -> float:
    """How long until sliding() is at most limit, with nothing new counted (at least 1 s)."""
    if sliding(previous, current, elapsed) <= limit:
        return 1.0
    if current <= limit:
        # Within this minute, as the previous one's weight falls (previous > 0, or the window would fit).
        needed = 1.0 - (limit - current) / previous
        return max(1.0, (needed - elapsed) * WINDOW_S)
    # Only once this minute becomes the previous one and its weight falls enough.
    return max(1.0, (1.0 - elapsed + 1.0 - limit / current) * WINDOW_S)


def decide(rules: KeyRules, previous: tuple[float, float], current: tuple[float, float], elapsed: float,
           in_flight: int) -> Admission | None:
    """A refusal if a rule refuses (requests first, then tokens, then parallel), else None."""
    requests = sliding(previous[0], current[0], elapsed)
    tokens = sliding(previous[1], current[1], elapsed)
    reset_s = (1.0 - elapsed) * WINDOW_S
    if rules.rpm is not None and requests + 1 > rules.rpm:
        # Admitted again once the window holds at most rpm - 1: this request then fits.
        return Admission(False, Limit.REQUESTS, wait_s(previous[0], current[0], elapsed, rules.rpm - 1), requests,
                         tokens, reset_s)
    if rules.tpm is not None and tokens >= rules.tpm:
        return Admission(False, Limit.TOKENS, wait_s(previous[1], current[1], elapsed, rules.tpm - 1), requests,
                         tokens, reset_s)
    if rules.parallel_max is not None and in_flight >= rules.parallel_max:
        return Admission(False, Limit.PARALLEL, 1.0, requests, tokens, reset_s)
    return None


class RateStore(Protocol):
    async def admit(self, key_id: str, rules: KeyRules, request_id: str, slot_ttl_s: float) -> Admission:
        """Count the request if every rule admits it (and take a parallel slot); RateUnavailable if unreachable."""
        ...

    async def finish(self, key_id: str, rules: KeyRules, request_id: str, tokens: int) -> None:
        """The request ended: free its slot, count its tokens."""
        ...


@dataclass
class _Key:
    minute: int = 0
    counts: dict[int, list[float]] = field(default_factory=dict)  # minute -> [requests, tokens]
    slots: dict[str, float] = field(default_factory=dict)  # request id -> expiry


class InProcessRates:
    """The embedded store: the same decisions as Redis's, in one process."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._keys: dict[str, _Key] = {}

    async def admit(self, key_id: str, rules: KeyRules, request_id: str, slot_ttl_s: float) -> Admission:
        now = self._clock()
        state = self._state(key_id, now)
        minute, elapsed = divmod(now / WINDOW_S, 1.0)
        current = state.counts.setdefault(int(minute), [0.0, 0.0])
        previous = state.counts.get(int(minute) - 1, [0.0, 0.0])
        state.slots = {rid: expiry for rid, expiry in state.slots.items() if expiry > now}
        refused = decide(rules, (previous[0], previous[1]), (current[0], current[1]), elapsed, len(state.slots))
        if refused is not None:
            return refused
        current[0] += 1
        if rules.parallel_max is not None:
            state.slots[request_id] = now + slot_ttl_s
        return Admission(True, None, 0.0, sliding(previous[0], current[0], elapsed),
                         sliding(previous[1], current[1], elapsed), (1.0 - elapsed) * WINDOW_S)

    async def finish(self, key_id: str, rules: KeyRules, request_id: str, tokens: int) -> None:
        now = self._clock()
        state = self._state(key_id, now)
        state.slots.pop(request_id, None)
        if tokens > 0 and rules.tpm is not None:
            state.counts.setdefault(int(now // WINDOW_S), [0.0, 0.0])[1] += tokens

    def _state(self, key_id: str, now: float) -> _Key:
        state = self._keys.pop(key_id, None) or _Key()
        self._keys[key_id] = state  # the most recent last: the first ones are the idlest
        minute = int(now // WINDOW_S)
        if state.minute != minute:
            state.counts = {m: c for m, c in state.counts.items() if m >= minute - 1}
            state.minute = minute
        while len(self._keys) > KEYS_TRACKED_MAX:
            del self._keys[next(iter(self._keys))]
        assert math.isfinite(now), now
        return state
