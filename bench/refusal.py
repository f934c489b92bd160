"""What a refused request (402) costs the gateway in CPU, by body size (issue 6, item 13).

Starts `meterway serve` (embedded store) from a source tree, makes a wallet
too poor for the requests, sends refused chat requests one at a time over one
keep-alive connection, and reads the gateway process's CPU time (user + system,
all threads, from /proc/<pid>/stat) before and after each batch:

    tiny      a one-line prompt
    3.9 MB    a 3.9 MB prompt (body_bytes_max is 4 MiB)

Two poor wallets: one that cannot even pay the output (refused before any
counting), and, for the big body, one that pays the output but not the prompt
(the tight count runs, within limits.tokenize_bytes_max). A last row sends the
big body without a model (a 400 after parsing): the floor any answer to a body
of that size costs (aiohttp reading it, orjson parsing it).

    python bench/refusal.py                         # this tree
    python bench/refusal.py --source /tmp/before    # another checkout (e.g. `git worktree add /tmp/before <commit>`)

Nothing contacts a provider: every request is refused before it is forwarded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-refusal-admin-token-5c0e8a91f2d7b364"
MODEL = "gpt-4o-mini"
TICKS = os.sysconf("SC_CLK_TCK")
# The floor: a body of the same size answered 400 (no model) costs reading and parsing it, nothing more.
FLOOR = "(400: no model)"
BIG_PROMPT = "the quick brown fox jumps over the lazy dog " * 90_000  # 3,960,000 bytes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def config(tmp: Path, port: int) -> Path:
    path = tmp / "refusal.toml"
    path.write_text(f"""
sqlite_path = "{tmp / 'bench.sqlite3'}"
admin_token = "{ADMIN_TOKEN}"
[listen]
port = {port}
[providers.fake]
base_url = "http://127.0.0.1:9/v1"
models = ["{MODEL}"]
[models."{MODEL}"]
input_per_1m = "0.15"
output_per_1m = "0.60"
max_output_tokens = 16384
[limits]
body_bytes_max = 4194304
""")
    return path


async def admin(session: aiohttp.ClientSession, base: str, path: str, body: dict) -> dict:
    async with session.post(f"{base}{path}", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as r:
        assert r.status in (200, 201), (r.status, await r.text())
        return await r.json()


async def poor_key(session: aiohttp.ClientSession, base: str, name: str, usd: str) -> str:
    await admin(session, base, "/admin/wallets", {"id": name})
    await admin(session, base, f"/admin/wallets/{name}/credits", {"amount": usd})
    return str((await admin(session, base, "/admin/keys", {"wallet": name, "name": name}))["key"])


async def measure(pid: int, base: str, repeats: dict[str, int]) -> list[tuple[str, str, int, float]]:
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        keys = {"output": await poor_key(session, base, "cannot-pay-output", "0.000001"),
                "prompt": await poor_key(session, base, "cannot-pay-prompt", "0.01")}
        for size, prompt, refused_by, max_tokens in (("tiny", "Hello there", "output", 16384),
                                                     ("3.9 MB", BIG_PROMPT, "output", 16384),
                                                     ("3.9 MB", BIG_PROMPT, "prompt", 10),
                                                     ("3.9 MB", BIG_PROMPT, FLOOR, 10)):
            body = json.dumps({"model": MODEL, "max_tokens": max_tokens,
                               "messages": [{"role": "user", "content": prompt}]}).encode()
            if refused_by == FLOOR:  # no model: a 400 once the body is read and parsed, nothing else
                body = body.replace(f'"model": "{MODEL}", '.encode(), b"", 1)
            headers = {"Authorization": f"Bearer {keys.get(refused_by, keys['output'])}", "Content-Type": "application/json"}
            count = repeats[size]
            status = 400 if refused_by == FLOOR else 402
            for _ in range(3):  # warm up (caches, first tokenizer use)
                await post(session, base, body, headers, status)
            before = cpu_seconds(pid)
            for _ in range(count):
                await post(session, base, body, headers, status)
            rows.append((size, refused_by, len(body), (cpu_seconds(pid) - before) / count * 1000))
    return rows


async def post(session: aiohttp.ClientSession, base: str, body: bytes, headers: dict[str, str], status: int) -> None:
    async with session.post(f"{base}/v1/chat/completions", data=body, headers=headers) as r:
        await r.read()
        assert r.status == status, (r.status, await r.text())


def wait_ready(base: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    import urllib.request
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the gateway exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=1)
            return
        except OSError:
            time.sleep(0.2)
    sys.exit("the gateway did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO, help="source tree to run the gateway from (default: this one)")
    parser.add_argument("--tiny", type=int, default=500, help="refused tiny requests per row (default 500)")
    parser.add_argument("--big", type=int, default=40, help="refused 3.9 MB requests per row (default 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        cfg = config(Path(tmp), port)
        env = {**os.environ, "PYTHONPATH": str(args.source.resolve())}
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())",
                                 "serve", "--config", str(cfg)], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "gateway.log", "w"))
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc)
            rows = asyncio.run(measure(proc.pid, base, {"tiny": args.tiny, "3.9 MB": args.big}))
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"source: {args.source.resolve()}")
    print("| body | refused because the wallet cannot pay | body bytes | gateway CPU ms per request |")
    print("|---|---|--:|--:|")
    for size, refused_by, length, ms in rows:
        reason = refused_by if refused_by == FLOOR else f"the {refused_by}"
        print(f"| {size} | {reason} | {length:,} | {ms:.2f} |")


if __name__ == "__main__":
    main()
