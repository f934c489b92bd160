"""Errors the client sees, in OpenAI's shape: {"error": {message, type, param, code}}.

An ApiError is a value: functions on the request path return it, and the
handler turns it into a response. The status decides whether the OpenAI SDK
retries; `x-should-retry: false` stops it where retrying cannot help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


@dataclass(frozen=True)
class ApiError:
    status: int
    message: str
    type: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self, request_id: str | None = None) -> web.Response:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        return web.Response(status=self.status, body=orjson.dumps(body), content_type="application/json", headers=headers)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", code, param)


def invalid_api_key(message: str = "Incorrect API key provided.") -> ApiError:
    return ApiError(401, message, "invalid_request_error", "invalid_api_key", headers={"x-should-retry": "false"})


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404, f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error", "model_not_found", "model",
    )


def insufficient_quota(available_usd: str, needed_usd: str) -> ApiError:
    # 402, as OpenRouter and Bifrost answer an empty wallet; the SDKs do not retry it.
    return ApiError(
        402,
        f"Insufficient balance: this request may cost up to ${needed_usd} and ${available_usd} is available."
        " Add funds or lower max_tokens.",
        "insufficient_quota", "insufficient_quota", headers={"x-should-retry": "false"},
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


# Set on a request by a handler that starts its response early (a stream):
# after that an error can only close the connection, not answer. Set where
# the stream starts, not by an on_response_prepare signal, which would cost
# every request a coroutine call. (web.RequestKey exists from aiohttp 3.13 on.)
RESPONSE_STARTED: Any = (web.RequestKey("mw_response_started", bool) if hasattr(web, "RequestKey")
                         else "mw_response_started")


def mark_response_started(request: web.Request) -> None:
    request[RESPONSE_STARTED] = True


def response_started(request: web.Request) -> bool:
    return bool(request.get(RESPONSE_STARTED))
