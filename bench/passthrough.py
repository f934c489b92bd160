"""A bare aiohttp pass-through proxy: the floor for any Python proxy.

No auth, no metering, no JSON parsing: read the body, POST it upstream over
one shared keep-alive ClientSession, return the upstream's body, status and
content type. The benchmark compares Meterway against this, so it runs on the
same stack as the gateway (aiohttp server + client, uvloop, no access log)
and with the same connection-pool size, and does nothing else.

    python bench/passthrough.py --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM = web.AppKey("upstream", str)
# Same pool size as the gateway's default limits.upstream_connections_max, so
# neither side is throttled by its pool.
CONNECTIONS_MAX = 1024


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    url = request.app[UPSTREAM] + request.path
    async with request.app[SESSION].post(url, data=body, headers={"Content-Type": "application/json"}) as upstream:
        raw = await upstream.read()
        content_type = upstream.headers.get("Content-Type", "application/json")
        return web.Response(status=upstream.status, body=raw, headers={"Content-Type": content_type})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _session(app: web.Application) -> AsyncIterator[None]:
    connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX, limit_per_host=CONNECTIONS_MAX)
    # auto_decompress=False as in the gateway: bytes are relayed untouched.
    app[SESSION] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    yield
    await app[SESSION].close()


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(_session)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--upstream", required=True, help="scheme://host:port, without a path")
    args = parser.parse_args()
    import uvloop

    web.run_app(build_app(args.upstream), host=args.host, port=args.port, loop=uvloop.new_event_loop(),
                access_log=None, print=None)


if __name__ == "__main__":
    main()
