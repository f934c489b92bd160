"""Does a dead webhook endpoint slow requests? p50 and p99 with and without one, side by side in one run.

    python bench/webhooks.py [--requests 2000] [--rounds 2]

Two embedded gateways on the same fake provider take turns. The "dead" one
has 16 endpoints whose receiver accepts connections and never answers, and
a stream of events for them, so its delivery task is always waiting on a
timeout; the other has none. Requests are sent one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.openai import FakeConfig, start_fake_upstream  # noqa: E402
from tests.gateway_harness import MODELS, Harness, settings_for, start_gateway  # noqa: E402

BODY = b'{"model": "flat-fee", "messages": [{"role": "user", "content": "hi"}]}'
WEBHOOKS = {"poll_interval_s": 0.05, "timeout_s": 2, "backoff_s": 0.05, "backoff_max_s": 0.05, "settled_s": 0,
            "allow_http": True, "lease_s": 5}


async def hanging_server() -> tuple[asyncio.Server, str]:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):  # read the request, never answer; return when the client gives up
            pass
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"


async def gateway(upstream: str, tmp: str, name: str, dead_url: str | None) -> tuple[Harness, str]:
    gw = await start_gateway(settings_for(upstream, {"sqlite_path": f"{tmp}/{name}.sqlite3"}, webhooks=WEBHOOKS))
    wallet, secret = await gw.funded_key("100000")
    if dead_url is not None:
        from gateway.money.webhook_delivery import new_secret, secret_context
        from ledger.webhooks import Endpoint

        box = gw.state.box
        for i in range(16):
            sealed = box.seal(new_secret(), secret_context(f"we{i}", wallet))  # type: ignore[union-attr]
            await gw.state.book.create_endpoint(Endpoint(f"we{i}", wallet, dead_url, ("cap.reached",), sealed))
        for i in range(200):
            await gw.state.book.emit_event(f"e{i}", wallet, "cap.reached", {"n": i})
    return gw, secret


async def measure(gw: Harness, secret: str, n: int) -> list[float]:
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            started = time.perf_counter()
            async with session.post(f"{gw.base_url}/v1/chat/completions", data=BODY, headers=headers) as response:
                await response.read()
                assert response.status == 200
            out.append((time.perf_counter() - started) * 1000)
    return out


async def main(requests: int, rounds: int) -> None:
    os.environ.setdefault("MW_MASTER_KEY", base64.b64encode(os.urandom(32)).decode())
    runner, upstream = await start_fake_upstream(FakeConfig(models=tuple(MODELS)))
    server, dead_url = await hanging_server()
    with tempfile.TemporaryDirectory() as tmp:
        quiet, quiet_key = await gateway(upstream, tmp, "quiet", None)
        dead, dead_key = await gateway(upstream, tmp, "dead", dead_url)
        await measure(quiet, quiet_key, 200)
        await measure(dead, dead_key, 200)
        results: dict[str, list[float]] = {"no endpoint": [], "16 dead endpoints": []}
        for r in range(rounds):
            order = [("no endpoint", quiet, quiet_key), ("16 dead endpoints", dead, dead_key)]
            for label, gw, key in order if r % 2 == 0 else reversed(order):
                results[label] += await measure(gw, key, requests)
        for label, times in results.items():
            q = statistics.quantiles(times, n=100)
            print(f"{label:18} p50 {statistics.median(times):.3f} ms  p99 {q[98]:.3f} ms  ({len(times)} requests)")
        for gw in (quiet, dead):
            await gw.runner.cleanup()
    server.close()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
