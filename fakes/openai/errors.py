"""The fake's errors, in OpenAI's ``{"error": {...}}`` shape and with its messages and headers."""

from __future__ import annotations

import orjson
from aiohttp import web

JSON = "application/json"


class ApiError(Exception):
    """An error answered in OpenAI's ``{"error": {...}}`` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self.headers = headers

    def response(self, request_id: str | None = None) -> web.Response:
        headers = dict(self.headers or {})
        if request_id:
            headers["x-request-id"] = request_id
        return web.Response(status=self.status, body=orjson.dumps(self.body), content_type=JSON, headers=headers)


_INJECTED_MESSAGES = {
    400: "fake upstream: injected bad request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The requested resource does not exist.",
    429: "Rate limit reached for requests. Please try again in 1s.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The engine is currently overloaded, please try again later.",
    504: "Gateway timeout.",
}


def rate_limit_headers(remaining_requests: int = 9999) -> dict[str, str]:
    """The x-ratelimit-* headers OpenAI sends on answers and on 429s."""
    return {
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-limit-tokens": "30000000",
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-remaining-tokens": "29999000",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-reset-tokens": "2ms",
    }


def injected_error(status: int) -> ApiError:
    """The error real OpenAI sends for ``status`` (used by ``FAKE:error=``)."""
    message = _INJECTED_MESSAGES.get(status, f"fake upstream: injected {status} error.")
    if status == 429:
        headers = {"retry-after": "1", "retry-after-ms": "1000", **rate_limit_headers(remaining_requests=0)}
        return ApiError(429, message, "requests", None, "rate_limit_exceeded", headers)
    if status >= 500:
        return ApiError(status, message, "server_error")
    if status == 401:
        return ApiError(401, message, code="invalid_api_key")
    return ApiError(status, message)


def invalid_json() -> ApiError:
    return ApiError(
        400,
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
    )


def missing(param: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


def invalid(param: str, why: str, code: str | None = None) -> ApiError:
    return ApiError(400, f"Invalid '{param}': {why}", param=param, code=code)


