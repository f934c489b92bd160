"""[webhooks]: delivering the event outbox to owners' endpoints: its bounds, retries and timeouts."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WebhookSettings(_Frozen):
    enabled: bool = True  # off: events are still written, nothing is sent
    poll_interval_s: float = Field(1.0, gt=0, le=60)  # how often due endpoints are looked for
    endpoints_per_poll_max: int = Field(50, gt=0, le=10_000)  # endpoints claimed per poll
    events_per_claim_max: int = Field(100, gt=0, le=10_000)  # events sent to one endpoint before it is let go
    concurrency_max: int = Field(16, gt=0, le=1_000)  # endpoints delivered to at once, per process
    timeout_s: float = Field(5.0, gt=0, le=60)  # one delivery's whole request
    attempts_max: int = Field(8, gt=0, le=100)  # then the event is given up on (logged) and the next is sent
    backoff_s: float = Field(2.0, gt=0)  # the wait after the first failure, doubled after each one...
    backoff_max_s: float = Field(3600.0, gt=0)  # ...up to this
    lease_s: float = Field(60.0, gt=0)  # an endpoint is one process's for this long (then another may take it)
    settled_s: float = Field(1.0, ge=0, le=60)  # events this young wait: transactions still committing land first
    body_bytes_max: int = Field(64 * 1024, gt=0)  # the response read back (to log an error) is cut here
    allow_http: bool = False  # plain http:// endpoints (for local tests; production wants https)
    daily_summary_hour_utc: int = Field(0, ge=0, le=23)  # usage.daily_summary for the day before, from this hour

    @model_validator(mode="after")
    def _lease_outlives_a_claim(self) -> WebhookSettings:
        if self.lease_s <= self.timeout_s:
            raise ValueError("webhooks.lease_s must exceed webhooks.timeout_s")
        if self.backoff_max_s < self.backoff_s:
            raise ValueError("webhooks.backoff_max_s must be at least webhooks.backoff_s")
        return self
