"""GET /readyz: can this process take paid requests right now?

/healthz says the process is alive; /readyz says whether a load balancer
should send it traffic: 503 while the ledger or the hold store does not answer
within limits.ready_check_timeout_s, or the settler is stuck (its loop not
running, settlements waiting for the ledger, the oldest pending one older than
limits.settle_stuck_after_s, or its backlog full). The body names each problem.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from aiohttp import web

from gateway.http.state import STATE


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    timeout_s = state.settings.limits.ready_check_timeout_s
    ledger, holds = await asyncio.gather(_check(state.book.ping(), timeout_s), _check(state.holds.ping(), timeout_s))
    health = state.settler.health()
    settlement = "ok" if not health.problems else "; ".join(health.problems)
    checks = {"ledger": ledger, "holds": holds, "settlement": settlement}
    ready = all(value == "ok" for value in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": checks,
        "settlement": {"queued": health.queued, "retrying": health.retrying,
                       "oldest_age_s": round(health.oldest_age_s, 3), "restarts": health.restarts},
    }
    return web.json_response(body, status=200 if ready else 503)


async def _check(call: Awaitable[None], timeout_s: float) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            await call
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except Exception as exc:  # whatever the store raised, it is not ready
        return f"{type(exc).__name__}: {exc}"
    return "ok"
