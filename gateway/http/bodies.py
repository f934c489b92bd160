"""Reading a management request's JSON body and validating it, for the admin API and the wallet API alike.

A refusal is raised as `Refused(ApiError)`, which each API's wrapper turns
into its OpenAI-shaped answer: handlers read top to bottom without checking
a result after every step.
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from aiohttp import web

from gateway.errors import ApiError, invalid_request
from gateway.http.admin_models import AdminInput, parse


class Refused(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


Model = TypeVar("Model", bound=AdminInput)


def valid(model: type[Model], data: Any) -> Model:
    parsed = parse(model, data)
    if isinstance(parsed, ApiError):
        raise Refused(parsed)
    return parsed


async def json_body(request: web.Request) -> Any:
    """The body as JSON; an empty body is an empty object, so a missing field is named as missing."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Refused(invalid_request("The body must be a JSON object.")) from exc
