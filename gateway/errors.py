"""Errors the client sees, as values: a status, a message, a type, a code, a param.

An ApiError is a value: functions on the request path return it, and the HTTP
layer (gateway/http/responses.py) turns it into a response, in the shape of
the client's wire protocol (gateway/dialects/). The status decides whether the
OpenAI SDK retries; `x-should-retry: false` stops it where retrying cannot help.
This module knows no web framework, so every layer may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ApiError:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def invalid_api_key(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_api_key", headers={"x-should-retry": "false"})


def key_expired(expires_at: str) -> ApiError:
    return ApiError(401, f"This API key expired at {expires_at}.", "invalid_request_error", "key_expired",
                    headers={"x-should-retry": "false"})


def model_not_allowed(model: str) -> ApiError:
    return ApiError(403, f"This API key may not call the model `{model}`.", "invalid_request_error",
                    "model_not_allowed", "model", headers={"x-should-retry": "false"})


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found", "model",
    )


TOP_UP_HINT = "Top up the wallet (its owner can, at POST /api/wallet/deposits or by enabling auto-reload)."


def insufficient_quota(available_usd: str, needed_usd: str) -> ApiError:
    # 402, as OpenRouter and Bifrost answer an empty wallet; the SDKs do not retry it.
    if available_usd == "0":  # the warning level "empty": only money helps
        message = f"Insufficient balance: the wallet is empty. {TOP_UP_HINT}"
    else:
        message = (f"Insufficient balance: this request may cost up to ${needed_usd} and ${available_usd} is"
                   f" available. {TOP_UP_HINT[:-1]}, or lower max_tokens.")
    return ApiError(402, message, "insufficient_quota", "insufficient_quota", headers={"x-should-retry": "false"})


# How a refusal names a cap's window.
WINDOW_PHRASES = {"day": "today (UTC)", "month": "this month (UTC)", "total": "in total",
                  "conversation": "in this conversation"}


def budget_exceeded(cap: str, window: str, resets_at: str | None, available_usd: str, needed_usd: str) -> ApiError:
    # 402 like an empty wallet, and never retried: waiting seconds will not reset a daily or monthly cap.
    resets = f"The limit resets at {resets_at}" if resets_at else "The limit does not reset"
    return ApiError(
        402,
        f"Spending limit reached: the {cap} has ${available_usd} left {WINDOW_PHRASES[window]} and this request may"
        f" cost up to ${needed_usd}. {resets}; an owner can raise it.",
        "insufficient_quota", "budget_exceeded", headers={"x-should-retry": "false"},
    )


def body_too_large(limit_bytes: int) -> ApiError:
    return ApiError(413, f"Request body exceeds the limit of {limit_bytes} bytes.", "invalid_request_error", "request_too_large")


def upstream_timeout() -> ApiError:
    return ApiError(504, "The upstream provider did not answer in time.", "server_error", "upstream_timeout")


def upstream_unreachable() -> ApiError:
    return ApiError(502, "The upstream provider could not be reached.", "server_error", "upstream_unreachable")


def service_unavailable(message: str, code: str) -> ApiError:
    return ApiError(503, message, "server_error", code)


def internal_error(request_id: str) -> ApiError:
    return ApiError(500, f"The server had an error while processing your request (request id {request_id}).",
                    "server_error", "internal_error")


def invalid_metrics_token() -> ApiError:
    return ApiError(401, "/metrics needs 'Authorization: Bearer <metrics token>'.", "invalid_request_error",
                    "invalid_metrics_token", headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


def not_found(message: str) -> ApiError:
    return ApiError(404, message, "invalid_request_error", "not_found")



def ip_not_allowed(address: str | None) -> ApiError:
    return ApiError(403, f"This API key may not be used from {address or 'an unknown address'}.",
                    "invalid_request_error", "ip_not_allowed", headers={"x-should-retry": "false"})


def rate_limited(what: str, limit: int, used: float, retry_after_s: float, headers: dict[str, str]) -> ApiError:
    """A 429 in OpenAI's words: type "requests" or "tokens", code rate_limit_exceeded, and when to retry."""
    retry = max(1, math.ceil(retry_after_s))
    per = "requests per min (RPM)" if what == "requests" else "tokens per min (TPM)"
    return ApiError(429, f"Rate limit reached for this API key on {per}: Limit {limit}, Used {int(used)}. "
                    f"Please try again in {retry}s.", what, "rate_limit_exceeded",
                    headers={**headers, "Retry-After": str(retry)})


def too_many_parallel(limit: int) -> ApiError:
    return ApiError(429, f"This API key may have at most {limit} requests in flight; one must finish first.",
                    "requests", "concurrency_limit_exceeded", headers={"Retry-After": "1"})
