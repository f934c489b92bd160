"""A fake OpenAI-compatible LLM provider for tests, benchmarks and the demo.

It answers ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``
and ``/v1/models`` with bodies shaped exactly like the real OpenAI API
(checked against OpenAI's published OpenAPI description in the tests), and
it is cheap enough to serve thousands of requests per second. A test steers
it with ``FAKE:key=value`` words in the prompt (see directives.py).

Faithful details worth knowing: legacy ``/v1/completions`` defaults
``max_tokens`` to 16 like the real endpoint; embeddings honour
``encoding_format`` ("base64" is what the openai SDK asks for by default)
and ``dimensions``; ``stream_options`` without ``stream`` is a 400.

Test introspection (outside /v1): ``GET /_fake/requests`` lists the last 100
requests (method, path, selected headers, parsed body); ``DELETE`` clears it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from aiohttp import web

from fakes.openai.bodies import encoding
from fakes.openai.directives import FakeConfig
from fakes.openai.handlers import FakeUpstream

__all__ = ["FakeConfig", "build_fake_app", "start_fake_upstream", "main"]


def build_fake_app(config: FakeConfig = FakeConfig()) -> web.Application:
    """The aiohttp application of a fake OpenAI provider configured by ``config``."""
    fake = FakeUpstream(config)
    encoding()  # load the tokenizer now, not inside the first request
    app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts are legitimate
    app.add_routes(
        [
            web.post("/v1/chat/completions", fake.chat_completions),
            web.post("/v1/completions", fake.completions),
            web.post("/v1/embeddings", fake.embeddings),
            web.get("/v1/models", fake.list_models),
            web.get("/v1/models/{model}", fake.retrieve_model),
            web.get("/_fake/requests", fake.get_requests),
            web.delete("/_fake/requests", fake.clear_requests),
            web.route("*", "/v1/{tail:.*}", fake.unknown_route),
        ]
    )
    return app


def _runner_options() -> dict[str, Any]:
    # No access log (it costs more than a request here); cancel handlers of
    # clients that went away so that FAKE:hang=1 does not pin a task for 60 s;
    # a short shutdown so tests do not wait on such handlers.
    return {"access_log": None, "handler_cancellation": True, "shutdown_timeout": 1.0}


async def start_fake_upstream(
    config: FakeConfig = FakeConfig(), host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve the fake in the running loop. Returns the runner (call
    ``await runner.cleanup()`` to stop) and the base URL ending in ``/v1``."""
    runner = web.AppRunner(build_fake_app(config), **_runner_options())
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound_port = runner.addresses[0][1]
    shown_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown_host}:{bound_port}/v1"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="meterway fake-upstream",
        description="Run a fake OpenAI-compatible provider (see fakes/openai/directives.py for FAKE: directives).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0)
    parser.add_argument("--completion-tokens", type=int, default=FakeConfig.completion_tokens)
    parser.add_argument("--embedding-dims", type=int, default=FakeConfig.embedding_dims)
    parser.add_argument("--models", help="comma-separated model ids to serve")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    parser.add_argument("--directives", default="", help='default directives, e.g. "FAKE:error=503"')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI: ``meterway fake-upstream [--port 9100] ...``. Runs until interrupted."""
    args = _parse_args(argv)
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else FakeConfig.models
    config = FakeConfig(
        latency_ms=args.latency_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        completion_tokens=args.completion_tokens,
        embedding_dims=args.embedding_dims,
        models=models,
        api_key=args.api_key,
        default_directives=args.directives,
    )
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(build_fake_app(config), host=args.host, port=args.port, loop=loop, backlog=1024, **_runner_options())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
