"""The one upstream ClientSession, and the translation of its errors.

aiohttp's client side is used here and nowhere else: a call either answers
(a Reply, or an open Stream) or fails as a value (UpstreamFailed: 504 when the
provider did not answer in time, 502 when it could not be reached). A stream
that breaks after it started raises UpstreamBroken from chunks(). Nothing in
this module knows a wire protocol; that is gateway/dialects/.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from config.settings import Limits

# What the client is told when an upstream error body cannot be read.
UNREADABLE_ERROR_BODY = b'{"error": {"message": "upstream error", "type": "server_error", "param": null, "code": null}}'


class UpstreamBroken(Exception):
    """The upstream stream ended in the middle or sent something unusable."""


@dataclass(frozen=True)
class UpstreamFailed:
    """No answer: the request never reached the provider, or its answer never came."""

    status: int  # 504: no answer in time; 502: could not be reached
    code: str
    detail: str  # the exception's class and text, for the log (never a key or a body)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class Stream:
    """An upstream answer whose body is read as it comes; close() it in a finally."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read_all(self) -> bytes:
        """The whole body (an error answer); a placeholder if it cannot be read."""
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError):
            return UNREADABLE_ERROR_BODY

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamBroken(str(exc)) from exc

    def close(self) -> None:
        self._response.close()


def failed(exc: BaseException) -> UpstreamFailed:
    """aiohttp's client errors as a value; anything else (a cancellation, a bug) is raised again."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncio.TimeoutError):
        return UpstreamFailed(504, "upstream_timeout", detail)
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamFailed(502, "upstream_unreachable", detail)
    raise exc


class Upstream:
    """The one ClientSession of a gateway, with the limits of configuration."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @classmethod
    def open(cls, limits: Limits) -> Upstream:
        connector = aiohttp.TCPConnector(limit=limits.upstream_connections_max,
                                         limit_per_host=limits.upstream_connections_max)
        timeout = aiohttp.ClientTimeout(total=limits.upstream_total_timeout_s, sock_connect=limits.upstream_connect_timeout_s)
        # auto_decompress=False: bodies are relayed as they came, with their Content-Encoding.
        return cls(aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False))

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Reply | UpstreamFailed:
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                return Reply(response.status, response.headers, await response.read())
        except (TimeoutError, aiohttp.ClientError) as exc:
            return failed(exc)

    async def deliver(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float,
                      read_max: int) -> Reply | UpstreamFailed:
        """A webhook delivery: its own deadline, the answer read no further than read_max bytes."""
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
                return Reply(response.status, response.headers, await response.content.read(read_max))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return failed(exc)

    async def stream(self, url: str, body: bytes, headers: Mapping[str, str]) -> Stream | UpstreamFailed:
        try:
            return Stream(await self._session.post(url, data=body, headers=headers))
        except (TimeoutError, aiohttp.ClientError) as exc:
            return failed(exc)

    async def close(self) -> None:
        await self._session.close()
