"""Meterway's throughput/latency benchmark, all on loopback, in one go.

Four targets, measured side by side with the same wrk load:

    direct              wrk -> fake upstream (the floor of the floor)
    passthrough         wrk -> bench/passthrough.py (bare aiohttp+uvloop) -> fake
    gateway-embedded    wrk -> meterway serve (SQLite, in-process holds) -> fake
    gateway-production  wrk -> meterway serve (Postgres settle, Redis holds) -> fake

Each proxy is pinned to CPU 0; the fake upstream and wrk share CPU 1. For each
concurrency the targets take turns (direct, passthrough, embedded, production),
so drift on the machine hits all of them alike; only one is loaded at a time.

    apt-get install -y wrk
    python bench/run.py             # ~3 min: concurrency 1, 10, 50, 200; 8 s each
    python bench/run.py --quick     # ~30 s smoke run
    python bench/run.py --profile   # plus py-spy profiles of the three proxies (~4 min)

Results: a table on stdout, bench/results/latest.json, and a Markdown table.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
EXAMPLE_CONFIG = REPO / "config" / "example.toml"
WRK_SCRIPT = BENCH_DIR / "chat.lua"
RESULTS_DIR = BENCH_DIR / "results"
LOGS_DIR = RESULTS_DIR / "logs"

PG_ADMIN_DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "gpt-4o-mini"
PROXY_CPU = "0"  # every proxy under test
LOAD_CPU = "1"  # the fake upstream and wrk
TARGETS = ("direct", "passthrough", "gateway-embedded", "gateway-production")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The goal for one Meterway worker with full metering (see bench/README.md).
GOAL_RPS_RATIO = 0.60
GOAL_ADDED_P50_MS = 0.6
# Above this share of CPU 0 used by others (Postgres and Redis included) a run is flagged as noisy.
NOISE_MAX = 0.15


# ---------------------------------------------------------------------------
# Command line


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark Meterway against a bare aiohttp pass-through, on loopback.")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per target and concurrency (8)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load before each run (2)")
    parser.add_argument("--concurrency", default="1,10,50,200", help="comma-separated wrk connection counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s runs, 1 s warm-up, concurrency 1 and 50")
    parser.add_argument("--profile", action="store_true",
                        help="afterwards, profile each proxy with py-spy under load (concurrency 50; ~45 s more)")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "latest.json")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.concurrency = 2.0, 1.0, "1,50"
    args.concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    return args


def fail(message: str) -> NoReturn:
    raise SystemExit(f"bench: {message}")


def preflight(profile: bool) -> str:
    """Check the tools up front; returns the path of the `meterway` command."""
    if shutil.which("wrk") is None:
        fail("wrk is not installed. Install it with:  apt-get install -y wrk")
    if shutil.which("taskset") is None:
        fail("taskset is missing (package util-linux)")
    if profile and shutil.which("py-spy") is None:
        fail("--profile needs py-spy:  pip install py-spy")
    if len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0):
        fail("needs CPUs 0 and 1 (proxy on CPU 0, load generator and fake upstream on CPU 1)")
    # The entry point beside this interpreter: the same environment as this
    # script, and no version-manager shim between us and the process we measure.
    sibling = Path(sys.executable).with_name("meterway")
    meterway = str(sibling) if sibling.exists() else shutil.which("meterway")
    if meterway is None:
        fail("the `meterway` command is missing: run `pip install -e .` in the repository")
    return meterway


# ---------------------------------------------------------------------------
# Processes


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    dsn: str | None = None  # the production gateway's database: lets us count its settle commits


Targets = dict[str, tuple[Service, bool]]  # name -> (service, is a proxy whose CPU we measure)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(stack: contextlib.ExitStack, name: str, argv: list[str], cpu: str, url: str, logs: Path,
          env: dict[str, str] | None = None) -> Service:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        # A new session: Ctrl-C reaches only this script, which then stops the
        # services in order (gateway before the schema it writes to is dropped).
        proc = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO, start_new_session=True)
    service = Service(name, proc, url, log)
    stack.callback(stop, service)
    return service


def stop(service: Service) -> None:
    if service.proc.poll() is not None:
        return
    service.proc.send_signal(signal.SIGINT)  # aiohttp's graceful exit: settlements drain
    try:
        service.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()


def wait_ready(service: Service, path: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            fail(f"{service.name} exited with {service.proc.returncode}:\n{tail(service.log)}")
        try:
            with urllib.request.urlopen(service.url + path, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    fail(f"{service.name} not ready after {timeout_s:.0f} s:\n{tail(service.log)}")


def tail(log: Path, lines: int = 30) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every cleanup callback runs.

    Used as the innermost context of main(), so it exits just before the
    cleanup: from then on interrupts are ignored, and a second Ctrl-C cannot
    cut the cleanup short (it is bounded by stop()'s timeouts anyway)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupt)
    try:
        yield
    finally:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)


def interrupts_back_to_default() -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


# ---------------------------------------------------------------------------
# /proc: CPU time and memory of a process and its descendants


def stat_fields(pid: int) -> list[str]:
    # The command name may contain spaces and parentheses: split after the last ")".
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                parents[int(entry.name)] = int(stat_fields(int(entry.name))[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of each process (all its threads: SQLite, tokenizer pool...)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def rss_mb(pids: list[int]) -> float:
    total_kb = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
            total_kb += int(match.group(1)) if match else 0
    return total_kb / 1024


def cpu_busy_seconds() -> dict[str, float]:
    """Busy time of each CPU since boot (all processes), from /proc/stat."""
    busy = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *ticks = line.split()
        if name.startswith("cpu") and name != "cpu":
            values = [int(t) for t in ticks]
            busy[name[3:]] = (sum(values[:8]) - values[3] - values[4]) / CLK_TCK  # minus idle, iowait
    return busy


def pids_named(*names: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and (entry / "comm").read_text().strip() in names:
                pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class StoresSnapshot:
    """CPU of the Postgres and Redis servers (whole servers: any other client
    counts too) and the number of settle transactions in our schema."""

    postgres_cpu_s: float
    redis_cpu_s: float
    settle_commits: int

    @classmethod
    def take(cls, dsn: str) -> StoresSnapshot:
        # mw_settle_batch writes a whole batch in one transaction, so the usage
        # rows of a batch share their xmin: distinct xmins = commits.
        commits = pg_query("SELECT count(DISTINCT xmin::text) FROM mw_usage", dsn)
        return cls(cpu_seconds(pids_named("postgres")), cpu_seconds(pids_named("redis-server")), int(commits))


def children_cpu_seconds() -> float:
    """CPU of reaped children: brackets exactly one wrk run."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------------------
# Postgres schema, Redis keys, config and provisioning


def create_schema(stack: contextlib.ExitStack) -> str:
    schema = f"bench_{secrets.token_hex(6)}"
    pg_query(f"CREATE SCHEMA {schema}")
    stack.callback(pg_query, f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    sep = "&" if "?" in PG_ADMIN_DSN else "?"
    return f"{PG_ADMIN_DSN}{sep}search_path={schema}"


def pg_query(sql: str, dsn: str = PG_ADMIN_DSN) -> Any:
    """One statement on a fresh connection; returns the first value, if any."""
    import asyncpg

    async def run() -> Any:
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            fail(f"Postgres not reachable at {dsn} (set BENCH_DATABASE_URL): {exc}")
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def redis_prefix(stack: contextlib.ExitStack) -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        fail(f"Redis not reachable at {REDIS_URL} (set BENCH_REDIS_URL): {exc}")
    prefix = f"mwbench{secrets.token_hex(5)}"
    # As an established deployment: an old generation, so the first requests do not
    # wait out the grace a brand-new Redis pays once (limits.redis_recovery_grace_s).
    client.hset(f"{prefix}:generation", mapping={"id": "bench", "born_ms": 0})

    def clean() -> None:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    stack.callback(clean)
    return prefix


def keep_logs(tmp: Path) -> None:
    LOGS_DIR.mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.log"):
        shutil.copy(log, LOGS_DIR / log.name)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string is a valid TOML basic string


def write_config(path: Path, sqlite_path: Path, port: int, upstream: str) -> None:
    """config/example.toml, cut down to the one priced model, pointed at the fake."""
    example = tomllib.loads(EXAMPLE_CONFIG.read_text())
    sections = {
        "listen": {"host": "127.0.0.1", "port": port},
        "providers.fake": {"base_url": f"{upstream}/v1", "models": [MODEL]},
        f'models."{MODEL}"': example["models"][MODEL],
        "limits": example["limits"],
    }
    lines = [f"sqlite_path = {toml_value(str(sqlite_path))}"]
    for header, table in sections.items():
        lines += ["", f"[{header}]", *(f"{key} = {toml_value(value)}" for key, value in table.items())]
    path.write_text("\n".join(lines) + "\n")


def gateway_env(extra: dict[str, str]) -> dict[str, str]:
    # Nothing inherited may redirect the gateway (a stray DATABASE_URL or MW_*).
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("MW_")}
    return env | extra


def provision(meterway: str, config: Path, env: dict[str, str]) -> str:
    """Wallet `bench` with 1,000,000 USD and one key; returns the key."""
    def cli(*args: str) -> str:
        done = subprocess.run([meterway, "--config", str(config), *args], env=env, cwd=REPO, check=False,
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            fail(f"`meterway {' '.join(args)}` failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    cli("migrate")  # serve and the operator commands refuse a Postgres schema that is behind
    cli("wallet", "create", "bench")
    cli("wallet", "credit", "bench", "1000000")
    match = re.search(r"^key:\s+(mw-\S+)", cli("keys", "create", "--wallet", "bench"), re.MULTILINE)
    if match is None:
        fail("`meterway keys create` printed no `key:    mw-...` line")
    return match.group(1)


def start_gateway(stack: contextlib.ExitStack, name: str, meterway: str, tmp: Path, upstream: str,
                  extra_env: dict[str, str]) -> tuple[Service, str]:
    port = free_port()
    config = tmp / f"{name}.toml"
    write_config(config, tmp / f"{name}.sqlite3", port, upstream)
    env = gateway_env(extra_env)
    key = provision(meterway, config, env)
    service = start(stack, name, [meterway, "serve", "--config", str(config)], PROXY_CPU,
                    f"http://127.0.0.1:{port}", tmp, env)
    service.dsn = extra_env.get("DATABASE_URL")
    wait_ready(service, "/healthz")
    return service, key


# ---------------------------------------------------------------------------
# Load


@dataclass
class Run:
    target: str
    concurrency: int
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    non200: int
    first_bad_status: int
    first_bad_body: str
    socket_errors: int
    proxy_cpu_us_per_req: float | None  # None: no proxy (direct)
    proxy_rss_mb: float | None
    cpu1_busy: float  # share of CPU 1 used by wrk + fake upstream: near 1.0 means the load side saturated
    cpu0_other: float  # share of CPU 0 used by anything but the proxy: noise from other work on the machine
    # Production gateway only: the servers behind it, per request.
    postgres_cpu_us_per_req: float | None = None
    redis_cpu_us_per_req: float | None = None
    requests_per_commit: float | None = None
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    rps_ratio: float | None = None  # / passthrough at the same concurrency
    cpu_ratio: float | None = None  # CPU per request / passthrough's

    @property
    def valid(self) -> bool:
        return self.non200 == 0 and self.socket_errors == 0 and self.requests > 0


def wrk(url: str, key: str, connections: int, duration_s: float) -> dict[str, Any]:
    # One wrk thread: wrk is pinned to one core, where a second thread would
    # only add context switches.
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{duration_s:g}s", "--timeout", "5s",
            "--latency", "-s", str(WRK_SCRIPT), url, "--", key]
    done = subprocess.run(argv, check=False, capture_output=True, text=True, errors="replace", timeout=duration_s + 60)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
            return result
    fail(f"wrk printed no result (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def measure(target: str, service: Service, proxied: bool, fake: Service, key: str, connections: int,
            args: argparse.Namespace) -> Run:
    if args.warmup > 0:
        wrk(service.url, key, connections, args.warmup)
    pids = process_tree(service.proc.pid) if proxied else []
    fake_pids = process_tree(fake.proc.pid)
    stores_before = StoresSnapshot.take(service.dsn) if service.dsn else None
    proxy_before, fake_before, wrk_before = cpu_seconds(pids), cpu_seconds(fake_pids), children_cpu_seconds()
    busy_before, started = cpu_busy_seconds(), time.monotonic()
    result = wrk(service.url, key, connections, args.duration)
    wall = time.monotonic() - started
    cpu0_busy = cpu_busy_seconds()[PROXY_CPU] - busy_before[PROXY_CPU]
    proxy_cpu = cpu_seconds(pids) - proxy_before
    load_cpu = cpu_seconds(fake_pids) - fake_before + children_cpu_seconds() - wrk_before
    requests, latency = result["requests"], result["latency_us"]
    duration_s = result["duration_us"] / 1e6
    run = Run(
        target=target, concurrency=connections, requests=requests, duration_s=round(duration_s, 3),
        rps=requests / duration_s, p50_ms=latency["p50"] / 1000, p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000, mean_ms=latency["mean"] / 1000, max_ms=latency["max"] / 1000,
        non200=result["non200"], first_bad_status=result["first_bad_status"], first_bad_body=result["first_bad_body"],
        socket_errors=sum(result["errors"][k] for k in ("connect", "read", "write", "timeout")),
        proxy_cpu_us_per_req=proxy_cpu / requests * 1e6 if proxied and requests else None,
        proxy_rss_mb=rss_mb(pids) if proxied else None,
        cpu1_busy=load_cpu / wall, cpu0_other=max(cpu0_busy - proxy_cpu, 0.0) / wall,
    )
    if stores_before and service.dsn and requests:
        add_stores(run, stores_before, StoresSnapshot.take(service.dsn))
    return run


def add_stores(run: Run, before: StoresSnapshot, after: StoresSnapshot) -> None:
    run.postgres_cpu_us_per_req = (after.postgres_cpu_s - before.postgres_cpu_s) / run.requests * 1e6
    run.redis_cpu_us_per_req = (after.redis_cpu_s - before.redis_cpu_s) / run.requests * 1e6
    commits = after.settle_commits - before.settle_commits
    run.requests_per_commit = run.requests / commits if commits else None


def run_matrix(targets: Targets, fake: Service, key_of: dict[str, str],
               args: argparse.Namespace) -> list[Run]:
    runs = []
    for connections in args.concurrencies:
        for name, (service, proxied) in targets.items():
            run = measure(name, service, proxied, fake, key_of[name], connections, args)
            runs.append(run)
            flag = "" if run.valid else (f"\n    INVALID: {run.non200} non-200, {run.socket_errors} socket errors; "
                                         f"first: {run.first_bad_status} {run.first_bad_body}")
            print(f"  c={connections:<4} {name:<19} {run.rps:>8.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
                  f"p99 {run.p99_ms:6.2f} ms  CPU {fmt(run.proxy_cpu_us_per_req, '.0f')} us/req  "
                  f"other load on CPU {PROXY_CPU}: {run.cpu0_other:.0%}{flag}", flush=True)
    return runs


def derive(runs: list[Run]) -> None:
    """Added latency vs direct; throughput and CPU ratios vs the pass-through."""
    by_key = {(r.target, r.concurrency): r for r in runs}
    for run in runs:
        direct = by_key.get(("direct", run.concurrency))
        floor = by_key.get(("passthrough", run.concurrency))
        if direct and run.target != "direct":
            run.added_p50_ms = run.p50_ms - direct.p50_ms
            run.added_p99_ms = run.p99_ms - direct.p99_ms
        if floor and run.target not in ("direct", "passthrough"):
            run.rps_ratio = run.rps / floor.rps
            if run.proxy_cpu_us_per_req and floor.proxy_cpu_us_per_req:
                run.cpu_ratio = run.proxy_cpu_us_per_req / floor.proxy_cpu_us_per_req


# ---------------------------------------------------------------------------
# Profile (optional)


PROFILE_RATE_HZ = 100
PROFILE_SECONDS = 8.0


def profile(name: str, service: Service, key: str) -> dict[str, Any]:
    """py-spy on one proxy under load (c=50): a flame graph for people, and
    collapsed stacks summarised here. py-spy samples from outside (on CPU 1),
    so the proxy runs unmodified. --gil keeps only samples of the thread
    holding the GIL: the Python work, without idle pool threads (which py-spy
    would count as busy). Sampling pauses the process (without the pause,
    half the stacks come out truncated), so the rate is kept low, and shares
    are turned into µs per request with the process's CPU time from /proc,
    which does not count the pauses."""
    svg, raw = RESULTS_DIR / f"profile-{name}.svg", RESULTS_DIR / f"profile-{name}.txt"
    for fmt_name, out in (("flamegraph", svg), ("raw", raw)):
        spy = subprocess.Popen(["taskset", "-c", LOAD_CPU, "py-spy", "record", "--pid", str(service.proc.pid),
                                "--rate", str(PROFILE_RATE_HZ), "--duration", f"{PROFILE_SECONDS + 1:g}",
                                "--nolineno", "--gil", "--format", fmt_name, "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)  # let py-spy attach before the load starts
            pids = process_tree(service.proc.pid)
            cpu_before = cpu_seconds(pids)
            result = wrk(service.url, key, 50, PROFILE_SECONDS)
            cpu_us_per_req = (cpu_seconds(pids) - cpu_before) / max(result["requests"], 1) * 1e6
            _, err = spy.communicate(timeout=60)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0:
            fail(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-2000:]}")
        if result["requests"] == 0 or result["non200"]:
            fail(f"the load during the profile of {name} failed: {result}")
    return summarise_profile(raw, cpu_us_per_req) | {
        "requests": result["requests"], "rps_while_profiled": round(result["requests"] / (result["duration_us"] / 1e6)),
        "flamegraph": str(svg.relative_to(REPO)), "collapsed_stacks": str(raw.relative_to(REPO))}


OWN_CODE = ("gateway/", "ledger/", "config/", "passthrough.py")


def frame_file(frame: str) -> str:
    """'handle (gateway/http/proxy.py)' -> 'gateway/http/proxy.py'."""
    match = re.search(r"\(([^()]*)\)$", frame)
    return match.group(1) if match else frame


def frame_module(frame: str) -> str:
    """Our files by name; libraries by package ('aiohttp/web.py' -> 'aiohttp')."""
    path = frame_file(frame)
    return path if path.startswith(OWN_CODE) else path.split("/", 1)[0].removesuffix(".py")


def summarise_profile(raw: Path, cpu_us_per_req: float) -> dict[str, Any]:
    self_by_module: Counter[str] = Counter()
    self_by_function: Counter[str] = Counter()
    own_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count, frames = int(count_text), stack.split(";")
        total += count
        self_by_module[frame_module(frames[-1])] += count
        self_by_function[frames[-1]] += count
        for frame in {f for f in frames if frame_file(f).startswith(OWN_CODE) and "gateway/cli/" not in f}:
            own_inclusive[frame] += count

    def shares(counter: Counter[str], n: int) -> list[tuple[str, float, float]]:
        """(name, % of samples, ≈ CPU µs per request)"""
        return [(k, round(100 * v / total, 1), round(cpu_us_per_req * v / total, 1)) for k, v in counter.most_common(n)]

    return {"samples": total, "cpu_us_per_req": round(cpu_us_per_req, 1),
            "self_by_module": shares(self_by_module, 12), "self_by_function": shares(self_by_function, 20),
            "own_code_inclusive": shares(own_inclusive, 25)}


# ---------------------------------------------------------------------------
# Report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(runs: list[Run]) -> None:
    header = (f"{'target':<19} {'conc':>4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'+p99 ms':>8} "
              f"{'CPU us/req':>10} {'RSS MB':>7} {'rps/pass':>8} {'cpu/pass':>8} {'cpu0*':>5} {'cpu1':>5} {'ok':>3}")
    print(header)
    print("-" * len(header))
    for r in runs:
        print(f"{r.target:<19} {r.concurrency:>4} {r.rps:>8.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} "
              f"{fmt(r.added_p50_ms, '+8.2f'):>8} {fmt(r.added_p99_ms, '+8.2f'):>8} "
              f"{fmt(r.proxy_cpu_us_per_req, '10.0f'):>10} {fmt(r.proxy_rss_mb, '7.1f'):>7} "
              f"{fmt(r.rps_ratio, '8.2f'):>8} {fmt(r.cpu_ratio, '8.2f'):>8} {r.cpu0_other:>5.2f} {r.cpu1_busy:>5.2f} "
              f"{'yes' if r.valid else 'NO':>3}")


def print_stores(runs: list[Run]) -> None:
    """What the production gateway costs Postgres and Redis, and its settle batching."""
    rows = [r for r in runs if r.postgres_cpu_us_per_req is not None]
    if not rows:
        return
    print("\nBehind gateway-production (CPU of the whole Postgres / Redis servers per request; "
          "requests per settle commit):")
    for r in rows:
        print(f"  c={r.concurrency:<4} Postgres {r.postgres_cpu_us_per_req:5.0f} µs/req   "
              f"Redis {fmt(r.redis_cpu_us_per_req, '4.0f')} µs/req   {fmt(r.requests_per_commit, '5.1f')} req/commit")


def markdown_table(runs: list[Run]) -> str:
    lines = ["| target | conc | req/s | p50 ms | p99 ms | added p50 / p99 ms | CPU µs/req | RSS MB | req/s ÷ pass | CPU ÷ pass |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in runs:
        added = "-" if r.added_p50_ms is None else f"{r.added_p50_ms:+.2f} / {r.added_p99_ms:+.2f}"
        lines.append(f"| {r.target} | {r.concurrency} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {added} | "
                     f"{fmt(r.proxy_cpu_us_per_req, '.0f')} | {fmt(r.proxy_rss_mb, '.0f')} | "
                     f"{fmt(r.rps_ratio, '.2f')} | {fmt(r.cpu_ratio, '.2f')} |")
    return "\n".join(lines)


def verdict(runs: list[Run]) -> dict[str, Any]:
    """The goal, checked on the production gateway: peak req/s vs the
    pass-through's peak, and added median latency at the lowest concurrency."""
    def peak(target: str) -> float:
        # An invalid run (errors are cheap to serve) must not set the peak.
        return max((r.rps for r in runs if r.target == target and r.valid), default=0.0)

    lightest = min(r.concurrency for r in runs)
    light = next(r for r in runs if r.target == "gateway-production" and r.concurrency == lightest)
    ratio = peak("gateway-production") / peak("passthrough") if peak("passthrough") else 0.0
    return {
        "peak_rps": {t: round(peak(t)) for t in TARGETS},
        "production_peak_rps_ratio": round(ratio, 3),
        "production_added_p50_ms_at_lightest": round(light.added_p50_ms or 0.0, 3),
        "lightest_concurrency": lightest,
        "goal": {"rps_ratio_min": GOAL_RPS_RATIO, "added_p50_ms_max": GOAL_ADDED_P50_MS},
        "rps_goal_met": ratio >= GOAL_RPS_RATIO,
        "latency_goal_met": light.valid and (light.added_p50_ms or 0.0) <= GOAL_ADDED_P50_MS,
    }


def print_verdict(v: dict[str, Any]) -> None:
    peaks = ", ".join(f"{t} {rps:,}" for t, rps in v["peak_rps"].items())
    print(f"\nPeak req/s: {peaks}")
    print(f"Production gateway / pass-through, peak req/s: {v['production_peak_rps_ratio']:.2f} "
          f"(goal >= {GOAL_RPS_RATIO:.2f}: {'met' if v['rps_goal_met'] else 'NOT met'})")
    print(f"Production gateway added p50 at c={v['lightest_concurrency']}: "
          f"{v['production_added_p50_ms_at_lightest']:.2f} ms "
          f"(goal <= {GOAL_ADDED_P50_MS} ms: {'met' if v['latency_goal_met'] else 'NOT met'})")


def print_profile(name: str, summary: dict[str, Any]) -> None:
    print(f"\nProfile of {name} at c=50: {summary['cpu_us_per_req']:.0f} µs CPU per request while profiled "
          f"({summary['rps_while_profiled']} req/s, {summary['samples']} samples; flame graph: {summary['flamegraph']})")
    sections = (("self time by module", "self_by_module"), ("self time by function", "self_by_function"),
                ("inclusive time of our own functions", "own_code_inclusive"))
    for title, key in sections:
        print(f"  {title}:  (% of samples, ≈ µs CPU per request)")
        for function, pct, us in summary[key]:
            print(f"    {pct:5.1f}% {us:6.1f}  {function}")


def code_revision() -> dict[str, Any]:
    """The commit measured, and whether the gateway's code differed from it."""
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, check=False, capture_output=True, text=True)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted_changes": git("status", "--porcelain", "--", "gateway", "ledger", "config").splitlines()}


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}


# ---------------------------------------------------------------------------


def start_services(stack: contextlib.ExitStack, meterway: str, tmp: Path) -> tuple[Targets, dict[str, str]]:
    """Every process of the benchmark; returns the targets and each one's API key."""
    fake_port, pass_port = free_port(), free_port()
    fake = start(stack, "fake-upstream", [meterway, "fake-upstream", "--host", "127.0.0.1", "--port", str(fake_port)],
                 LOAD_CPU, f"http://127.0.0.1:{fake_port}", tmp)
    wait_ready(fake, "/v1/models")
    passthrough = start(stack, "passthrough", [sys.executable, str(BENCH_DIR / "passthrough.py"), "--port",
                        str(pass_port), "--upstream", fake.url], PROXY_CPU, f"http://127.0.0.1:{pass_port}", tmp)
    wait_ready(passthrough, "/healthz")
    embedded, embedded_key = start_gateway(stack, "gateway-embedded", meterway, tmp, fake.url, {})
    production_env = {"DATABASE_URL": create_schema(stack), "REDIS_URL": REDIS_URL,
                      "MW_REDIS_PREFIX": redis_prefix(stack)}
    production, production_key = start_gateway(stack, "gateway-production", meterway, tmp, fake.url, production_env)
    targets = {"direct": (fake, False), "passthrough": (passthrough, True),
               "gateway-embedded": (embedded, True), "gateway-production": (production, True)}
    # Only the gateways check keys; the others get one too so every request is byte-identical.
    key_of = {"direct": production_key, "passthrough": production_key,
              "gateway-embedded": embedded_key, "gateway-production": production_key}
    return targets, key_of


def main() -> int:
    args = parse_args()
    meterway = preflight(args.profile)
    RESULTS_DIR.mkdir(exist_ok=True)
    profiles: dict[str, Any] = {}
    with contextlib.ExitStack() as stack, interrupts_as_exceptions():
        tmp = Path(tempfile.mkdtemp(prefix="meterway-bench-"))
        stack.callback(shutil.rmtree, tmp, True)
        # Runs after every service has stopped (callbacks unwind in reverse),
        # so the logs are complete; they explain any non-200 or crash.
        stack.callback(keep_logs, tmp)
        print(f"Starting services (logs in {tmp}) ...", flush=True)
        targets, key_of = start_services(stack, meterway, tmp)
        print(f"Measuring {args.duration:g} s per run after {args.warmup:g} s warm-up; "
              f"proxies on CPU {PROXY_CPU}, fake upstream + wrk on CPU {LOAD_CPU}", flush=True)
        runs = run_matrix(targets, targets["direct"][0], key_of, args)
        if args.profile:
            profiles = {name: profile(name, service, key_of[name]) for name, (service, proxied) in targets.items() if proxied}
        print("Stopping services and cleaning up ...", flush=True)
    interrupts_back_to_default()
    return report(args, runs, profiles)


def report(args: argparse.Namespace, runs: list[Run], profiles: dict[str, Any]) -> int:
    derive(runs)
    summary = verdict(runs)
    print()
    print_table(runs)
    print_stores(runs)
    print_verdict(summary)
    for name, one in profiles.items():
        print_profile(name, one)
    print("\nMarkdown:\n")
    print(markdown_table(runs))
    write_results(args, runs, summary, profiles)
    disturbed = [r for r in runs if r.target != "direct" and r.cpu0_other > NOISE_MAX]
    if disturbed:
        print(f"\nNOISY: {len(disturbed)} run(s) shared CPU {PROXY_CPU} with other work (cpu0* > {NOISE_MAX:.2f}); "
              "their figures understate the proxy. Rerun on a quiet machine.")
    invalid = [r for r in runs if not r.valid]
    if invalid:
        print(f"\nINVALID: {len(invalid)} run(s) had non-200 responses or socket errors; see the 'ok' column "
              f"and the logs in {LOGS_DIR.relative_to(REPO)}.")
    return 1 if invalid else 0


def write_results(args: argparse.Namespace, runs: list[Run], summary: dict[str, Any],
                  profiles: dict[str, Any]) -> None:
    document = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "code": code_revision(),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup, "concurrencies": args.concurrencies,
                     "proxy_cpu": PROXY_CPU, "load_cpu": LOAD_CPU, "wrk_threads": 1},
        "runs": [asdict(r) | {"valid": r.valid} for r in runs],
        "summary": summary,
        "profiles": profiles or None,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nWrote {args.output}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped and removed.", file=sys.stderr)
        sys.exit(130)
