"""Several `meterway serve` processes on one Postgres and one Redis.

These start the real command in subprocesses, so what is tested is what an
operator runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis

from gateway.money.operations import Operations
from ledger.book import FUNDING_ACCOUNT, check_invariants
from ledger.money import parse_usd
from ledger.postgres_book import PostgresBook
from ledger.redis_holds import RedisHolds
from tests.conftest import store_settings
from tests.gateway_harness import MODELS

FLAT_FEE_NUSD = parse_usd(MODELS["flat-fee"]["per_call"])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(path: Path, upstream_url: str) -> Path:
    lines = ['[providers.fake]', f'base_url = "{upstream_url}"', f"models = {list(MODELS)!r}".replace("'", '"'), ""]
    for name, fields in MODELS.items():
        lines.append(f'[models."{name}"]')
        lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items()]
        lines.append("")
    config = path / "meterway.toml"
    config.write_text("\n".join(lines))
    return config


async def wait_healthy(base_url: str, process: subprocess.Popen, timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as session:
        while asyncio.get_running_loop().time() < deadline:
            assert process.poll() is None, f"gateway exited with {process.returncode}"
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{base_url}/healthz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{base_url} did not become healthy")


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, upstream_url: str, extra_env: dict[str, str] | None = None) -> AsyncIterator[tuple[dict, Path, Operations]]:
    async with store_settings("production", tmp_path) as store:
        env = {**os.environ, "DATABASE_URL": store["database_url"], "REDIS_URL": store["redis_url"],
               "MW_REDIS_PREFIX": store["redis_prefix"], **(extra_env or {})}
        book = await PostgresBook.connect(store["database_url"])
        await book.migrate()
        holds = RedisHolds(aioredis.from_url(store["redis_url"]), prefix=store["redis_prefix"], close_client=True)
        try:
            yield env, write_config(tmp_path, upstream_url), Operations(book, holds)
        finally:
            await holds.close()
            await book.close()


def serve(env: dict[str, str], config: Path, port: int, workers: int = 1) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def fund(ops: Operations, wallet_id: str, amount_nusd: int) -> str:
    await ops.create_wallet(wallet_id)
    await ops.credit(wallet_id, amount_nusd, transfer_id=f"deposit-{wallet_id}")
    new, _ = await ops.create_key(wallet_id, "mp")
    return new.secret


@contextlib.asynccontextmanager
async def serving(env: dict[str, str], config: Path, count: int = 2) -> AsyncIterator[list[int]]:
    """`count` gateway processes on their own ports, healthy; stopped on the way out."""
    ports = [free_port() for _ in range(count)]
    processes = [serve(env, config, port) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            await wait_healthy(f"http://127.0.0.1:{port}", process)
        yield ports
    finally:
        for process in processes:
            stop(process)


def clients(ports: list[int], secret: str) -> list[openai.AsyncOpenAI]:
    return [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=secret, max_retries=0) for p in ports]


async def assert_no_holds(ops: Operations, wallet_id: str) -> None:
    holds = await ops.holds.wallet(wallet_id)
    assert holds is None or (holds.held_nusd, holds.hold_count) == (0, 0), holds


async def test_two_gateway_processes_never_overspend_a_wallet(tmp_path: Path, fake_upstream: str) -> None:
    n = 10
    async with cluster(tmp_path, fake_upstream) as (env, config, ops):
        ports = [free_port(), free_port()]
        processes = [serve(env, config, port) for port in ports]
        try:
            for port, process in zip(ports, processes, strict=True):
                await wait_healthy(f"http://127.0.0.1:{port}", process)
            key = await fund(ops, "shared", n * FLAT_FEE_NUSD)
            clients = [openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key=key, max_retries=0) for p in ports]

            async def one(i: int) -> bool:
                try:
                    await clients[i % 2].chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "x"}])
                    return True
                except openai.APIStatusError as exc:
                    assert exc.status_code == 402, exc
                    return False

            results = await asyncio.gather(*(one(i) for i in range(5 * n)))
        finally:
            for process in processes:
                stop(process)
        assert sum(results) == n
        wallet = await ops.book.wallet("shared")
        assert wallet is not None and wallet.balance_nusd == 0
        transfers = await ops.transactions("shared", limit=1000)
        deposits = sum(t.transfer.amount_nusd for t in transfers if t.transfer.debit_account == FUNDING_ACCOUNT)
        spent = sum(t.transfer.amount_nusd for t in transfers if t.transfer.debit_account == "shared")
        assert deposits == wallet.balance_nusd + spent == n * FLAT_FEE_NUSD
        await assert_no_holds(ops, "shared")
        check_invariants(await ops.book.totals())


async def test_workers_flag_runs_several_processes_on_one_port(tmp_path: Path, fake_upstream: str) -> None:
    async with cluster(tmp_path, fake_upstream) as (env, config, ops):
        port = free_port()
        process = serve(env, config, port, workers=2)
        try:
            await wait_healthy(f"http://127.0.0.1:{port}", process)
            key = await fund(ops, "multi", 100 * FLAT_FEE_NUSD)
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
            replies = await asyncio.gather(*(client.chat.completions.create(model="flat-fee", messages=[{"role": "user", "content": "x"}]) for _ in range(20)))
            assert len(replies) == 20
            children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
            assert len(children) >= 2, children
        finally:
            stop(process)
        assert (await ops.book.wallet("multi")).balance_nusd == 80 * FLAT_FEE_NUSD
        await assert_no_holds(ops, "multi")


def test_embedded_default_refuses_several_workers(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(write_config(tmp_path, "http://127.0.0.1:9/v1")), "--workers", "2"],
        env=env, capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs DATABASE_URL" in result.stderr


async def test_a_killed_gateways_hold_expires_and_is_released_by_another(tmp_path: Path, fake_upstream: str) -> None:
    short = {"MW_LIMITS__HOLD_TTL_S": "3", "MW_LIMITS__UPSTREAM_TOTAL_TIMEOUT_S": "2", "MW_LIMITS__EXPIRY_SWEEP_INTERVAL_S": "0.2"}
    async with cluster(tmp_path, fake_upstream, short) as (env, config, ops):
        ports = [free_port(), free_port()]
        doomed, survivor = serve(env, config, ports[0]), serve(env, config, ports[1])
        try:
            for port, process in zip(ports, (doomed, survivor), strict=True):
                await wait_healthy(f"http://127.0.0.1:{port}", process)
            key = await fund(ops, "crash", parse_usd("1"))
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{ports[0]}/v1", api_key=key, max_retries=0)
            pending = asyncio.ensure_future(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "FAKE:hang=1"}]))
            for _ in range(100):
                holds = await ops.holds.wallet("crash")
                if holds is not None and holds.hold_count == 1:
                    break
                await asyncio.sleep(0.05)
            assert holds is not None and holds.hold_count == 1 and holds.held_nusd > 0
            doomed.kill()  # SIGKILL: no cleanup, no release
            with pytest.raises(openai.APIConnectionError):
                await pending
            for _ in range(100):
                holds = await ops.holds.wallet("crash")
                if holds.hold_count == 0:
                    break
                await asyncio.sleep(0.1)
            assert (holds.held_nusd, holds.hold_count) == (0, 0)
            assert (await ops.book.wallet("crash")).balance_nusd == parse_usd("1")
        finally:
            stop(doomed)
            stop(survivor)
