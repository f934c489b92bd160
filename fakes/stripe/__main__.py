"""python -m fakes.stripe --port 12111 --localstripe http://127.0.0.1:8420: the front, by hand.

Start localstripe first (`localstripe --port 8420`), then point the stripe
library (or Meterway's `stripe.api_base`) at the front.
"""

from __future__ import annotations

import argparse

from aiohttp import web

from fakes.stripe.server import STATE, create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fakes.stripe", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--localstripe", default="http://127.0.0.1:8420", help="localstripe's URL")
    args = parser.parse_args()
    app = create_app(args.localstripe)
    app[STATE].base_url = f"http://{args.host}:{args.port}"
    web.run_app(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
