"""The `fake_stripe` fixture: localstripe in a subprocess, the Stripe front (fakes/stripe) in the test's loop.

The stripe library (and Meterway's `stripe.api_base`) is pointed at the front;
the methods here play the buyer and the card network through its /_fake/ controls.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from fakes.stripe.server import STATE, create_app, sign

SECRET_KEY = "sk_test_meterway0123456789"
STARTUP_WAIT_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeStripe:
    def __init__(self, api_base: str, session: aiohttp.ClientSession) -> None:
        self.api_base = api_base
        self.secret_key = SECRET_KEY
        self._http = session

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        async with self._http.post(f"{self.api_base}{path}", json=body or {}) as answer:
            found = await answer.json(content_type=None)
            assert answer.status == 200, (path, answer.status, found)
            return found

    async def register_webhook(self, url: str, secret: str) -> None:
        await self._post("/_fake/webhooks", {"url": url, "secret": secret})

    async def pay(self, session_id: str, outcome: str = "paid", card: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"outcome": outcome}
        if card is not None:
            body["card"] = card
        return dict(await self._post(f"/_fake/checkout/sessions/{session_id}/pay", body))

    async def async_result(self, session_id: str, succeeded: bool) -> dict[str, Any]:
        return dict(await self._post(f"/_fake/checkout/sessions/{session_id}/async", {"succeeded": succeeded}))

    async def expire(self, session_id: str) -> dict[str, Any]:
        return dict(await self._post(f"/_fake/checkout/sessions/{session_id}/expire"))

    async def refund(self, payment_intent_id: str, amount_cents: int | None = None) -> dict[str, Any]:
        return dict(await self._post("/_fake/refunds", {"payment_intent": payment_intent_id, "amount": amount_cents}))

    async def dispute(self, charge_id: str, amount_cents: int | None = None) -> dict[str, Any]:
        return dict(await self._post("/_fake/disputes", {"charge": charge_id, "amount": amount_cents}))

    async def events(self) -> list[dict[str, Any]]:
        async with self._http.get(f"{self.api_base}/_fake/events") as answer:
            return list((await answer.json())["data"])

    async def resend(self, event_id: str, times: int = 1) -> None:
        await self._post(f"/_fake/events/{event_id}/resend", {"times": times})

    async def get(self, path: str) -> dict[str, Any]:
        """A Stripe API object as the stripe library would read it (through the front)."""
        async with self._http.get(f"{self.api_base}{path}",
                                  headers={"Authorization": f"Bearer {self.secret_key}"}) as answer:
            return dict(await answer.json(content_type=None))

    @staticmethod
    def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
        return sign(payload, secret, timestamp)


async def _wait_for(url: str, process: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(int(STARTUP_WAIT_S / 0.1)):
            if process.poll() is not None:
                pytest.fail(f"localstripe exited with {process.returncode}")
            try:
                async with session.get(f"{url}/v1/customers", headers={"Authorization": f"Bearer {SECRET_KEY}"}):
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
    pytest.fail("localstripe did not start")


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    command = shutil.which("localstripe") or shutil.which("localstripe", path=os.path.dirname(sys.executable))
    if command is None:
        pytest.fail("localstripe is not installed: pip install -e '.[test]'")
    port = _free_port()
    process = subprocess.Popen([command, "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runner: web.AppRunner | None = None
    try:
        await _wait_for(f"http://127.0.0.1:{port}", process)
        app = create_app(f"http://127.0.0.1:{port}")
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        front_port = _free_port()
        await web.TCPSite(runner, "127.0.0.1", front_port).start()
        app[STATE].base_url = f"http://127.0.0.1:{front_port}"
        async with aiohttp.ClientSession() as session:
            yield FakeStripe(app[STATE].base_url, session)
    finally:
        if runner is not None:
            await runner.cleanup()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
