"""The CLI as an operator meets it: paths, what serve says at start, migrations,
Redis's eviction policy, exit codes, help, and the Docker image's settings.

Everything runs the real command in a subprocess against the real Postgres and
Redis; the Redis servers with a wrong policy are started here, on their own ports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from config.settings import load_settings
from gateway import cli
from gateway.money import stores
from ledger.book import migration_files
from tests.conftest import REDIS_TEST_URL, missing_service
from tests.gateway_harness import MODELS
from tests.test_multiprocess import stop

REPO = Path(__file__).resolve().parents[1]
METRICS_TOKEN = "metrics-token-0123456789abcdefghijklmnop"
ADMIN_TOKEN = "admin-token-0123456789abcdefghijklmnopqr"

# Every migration the files list (both dialects list the same), as `meterway migrate` names them.
ALL_MIGRATIONS = ", ".join(f"{n:04d}" for n, _ in migration_files("postgres"))


def clean_env(**extra: str) -> dict[str, str]:
    """No stray DATABASE_URL, REDIS_URL or MW_* from the caller; this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL") and not k.startswith("MW_")}
    env["PYTHONPATH"] = str(REPO)
    return env | extra


def meterway(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_config(path: Path, *, upstream: str | None = None, **fields: object) -> Path:
    lines = []
    for name, value in fields.items():
        lines.append(f"{name} = {value!r}".replace("'", '"') if isinstance(value, str) else f"{name} = {str(value).lower()}")
    if upstream:
        lines += ["[providers.fake]", f'base_url = "{upstream}"', f"models = {list(MODELS)!r}".replace("'", '"')]
        for model, prices in MODELS.items():
            lines.append(f'[models."{model}"]')
            lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}" for k, v in prices.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str], cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        stop(process)


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float = 30) -> str:
    """stdout up to and including the first line containing marker."""
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            _, err = process.communicate(timeout=10)
            raise AssertionError(f"exited {process.returncode} before {marker!r}:\n{''.join(seen)}\n{err}")
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout_s} s:\n{''.join(seen)}")


async def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await _sleep(0.1)
    raise AssertionError(f"{url} did not answer")


async def _sleep(s: float) -> None:
    import asyncio

    await asyncio.sleep(s)


@contextlib.contextmanager
def own_redis(*options: str) -> Iterator[str]:
    """A Redis server of this test's own (the shared one's policy is never touched)."""
    if shutil.which("redis-server") is None:
        missing_service("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


# --- item 17: paths from the config file; what serve says at start -------------------


def test_a_relative_sqlite_path_is_taken_from_the_config_file_not_the_working_directory(tmp_path: Path) -> None:
    config = toml_config(tmp_path / "etc" / "meterway.toml", sqlite_path="ledger.sqlite3",
                         settle_journal_path="journal/settle.jsonl")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert meterway("--config", str(config), "wallet", "create", "acme", cwd=tmp_path / "one").returncode == 0
    assert meterway("--config", str(config), "wallet", "credit", "acme", "3", "--id", "t1", cwd=tmp_path / "one").returncode == 0
    shown = meterway("--config", "../etc/meterway.toml", "wallet", "show", "acme", cwd=tmp_path / "two")
    assert shown.returncode == 0 and "balance:   3 USD" in shown.stdout, shown
    assert (tmp_path / "etc" / "ledger.sqlite3").exists()
    assert not list((tmp_path / "one").iterdir()) and not list((tmp_path / "two").iterdir()), "no ledger in the working directory"
    settings = load_settings(config)
    assert settings.sqlite_path == str(tmp_path / "etc" / "ledger.sqlite3")
    assert settings.journal_path == str(tmp_path / "etc" / "journal" / "settle.jsonl")
    # With no sqlite_path in the file, the default file lives beside the config too.
    bare = toml_config(tmp_path / "bare" / "m.toml")
    assert load_settings(bare).sqlite_path == str(tmp_path / "bare" / "meterway.sqlite3")


async def test_serve_says_what_it_serves_from_and_never_a_password(tmp_path: Path, pg_dsn: str, redis_url: str,
                                                                   fake_upstream: str) -> None:
    secret_dsn = pg_dsn.replace("postgres@", "postgres:hunter2-secret@", 1)  # trust auth: the password is unused
    assert "hunter2-secret" in secret_dsn
    port = free_port()
    config = toml_config(tmp_path / "m.toml", upstream=fake_upstream, redis_prefix="mwsummary")
    env = clean_env(DATABASE_URL=secret_dsn, REDIS_URL=redis_url)
    with serving("serve", "--config", str(config), "--port", str(port), "--migrate", env=env) as process:
        out = read_until(process, "listen:")
        await wait_http(f"http://127.0.0.1:{port}/healthz")
    assert "hunter2-secret" not in out
    schema = pg_dsn.rsplit("search_path=", 1)[1]
    assert f"applied migrations {ALL_MIGRATIONS} to Postgres postgresql://postgres@127.0.0.1:5432/test" in out, out
    assert f"config:    {config}" in out
    assert f"ledger:    Postgres postgresql://postgres@127.0.0.1:5432/test (search_path {schema})" in out
    assert f"holds:     Redis {redis_url} prefix 'mwsummary'" in out
    assert f"provider:  fake -> {fake_upstream} ({len(MODELS)} models)" in out
    assert f"listen:    http://127.0.0.1:{port}" in out


def test_descriptions_never_show_a_password() -> None:
    settings = load_settings(None, database_url="postgresql://mw:pw-secret@db.internal:5433/meter?sslmode=require&password=q",
                             redis_url="redis://:redis-secret@cache:6380/3", redis_prefix="p1")
    assert stores.describe_database(settings) == "Postgres postgresql://mw@db.internal:5433/meter"
    assert stores.describe_holds(settings) == "Redis redis://cache:6380/3 prefix 'p1'"


# --- item 18: the embedded CLI never claims that nothing is held ---------------------------


async def test_embedded_wallet_show_asks_the_running_gateway_or_says_held_is_unknown(tmp_path: Path) -> None:
    from fakes.openai import FakeConfig, start_fake_upstream

    runner, upstream = await start_fake_upstream(FakeConfig(models=tuple(MODELS), latency_ms=4000))
    port = free_port()
    config = toml_config(tmp_path / "m.toml", upstream=upstream, admin_token=ADMIN_TOKEN)
    env = clean_env()
    try:
        assert meterway("--config", str(config), "wallet", "create", "acme", env=env).returncode == 0
        assert meterway("--config", str(config), "wallet", "credit", "acme", "1", "--id", "f1", env=env).returncode == 0
        created = meterway("--config", str(config), "keys", "create", "--wallet", "acme", env=env)
        secret = re.search(r"^key:\s+(mw-\S+)", created.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]

        # No gateway running (or none we can ask): "unknown", never "0".
        alone = meterway("--config", str(config), "wallet", "show", "acme", env=env)
        assert alone.returncode == 0, alone
        assert "held:      unknown (in-process holds live in the running gateway" in alone.stdout, alone.stdout
        assert "held:      0 USD" not in alone.stdout and "available: at most 1 USD" in alone.stdout

        with serving("serve", "--config", str(config), "--port", str(port), env=env):
            await wait_http(f"http://127.0.0.1:{port}/healthz")
            body = {"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
            async with aiohttp.ClientSession() as session:
                call = session.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                    headers={"Authorization": f"Bearer {secret}"})
                import asyncio

                pending = asyncio.ensure_future(call)
                await asyncio.sleep(1.0)  # the upstream answers after 4 s: the hold is open now
                # The CLI asks the gateway at listen.host:port (the config says 8080: --port is the serve's)
                shown = await asyncio.to_thread(
                    meterway, "--config", str(config), "wallet", "show", "acme",
                    env=env | {"MW_LISTEN__PORT": str(port)})
                response = await pending
                assert response.status == 200
                response.release()
        assert shown.returncode == 0, shown
        held = re.search(r"^held:\s+(\S+) USD", shown.stdout, re.MULTILINE)
        assert held is not None and float(held.group(1)) > 0, shown.stdout
        assert f"from the running gateway at http://127.0.0.1:{port}" in shown.stdout
    finally:
        await runner.cleanup()


# --- item 19: migrations are explicit for Postgres; Redis must not evict --------------------


def test_migrate_says_what_it_applied_and_where(tmp_path: Path, pg_dsn: str) -> None:
    env = clean_env(DATABASE_URL=pg_dsn)
    first = meterway("migrate", env=env)
    assert first.returncode == 0, first
    assert first.stdout.startswith(f"applied migrations {ALL_MIGRATIONS} to Postgres postgresql://postgres@127.0.0.1:5432/test"), first.stdout
    again = meterway("migrate", env=env)
    assert again.returncode == 0 and "schema up to date, nothing to apply" in again.stdout, again.stdout

    embedded = meterway("migrate", env=clean_env(MW_SQLITE_PATH=str(tmp_path / "e.sqlite3")))
    assert f"applied migrations {ALL_MIGRATIONS} to SQLite {tmp_path / 'e.sqlite3'}" in embedded.stdout, embedded


async def test_serve_refuses_a_postgres_schema_that_is_behind_and_does_not_migrate_it(
        tmp_path: Path, pg_dsn: str, fake_upstream: str) -> None:
    config = toml_config(tmp_path / "m.toml", upstream=fake_upstream)
    result = meterway("serve", "--config", str(config), "--port", str(free_port()),
                      env=clean_env(DATABASE_URL=pg_dsn, REDIS_URL=REDIS_TEST_URL))
    assert result.returncode == stores.EXIT_SCHEMA_BEHIND, result
    assert "needs migrations 0001" in result.stderr and "meterway migrate" in result.stderr
    no_traceback(result)
    from ledger.book import migration_files
    from ledger.postgres_book import PostgresBook

    book = await PostgresBook.connect(pg_dsn)
    try:
        every = [version for version, _ in migration_files("postgres")]
        assert len(every) >= 2 and await book.pending_migrations() == every, "serve migrated the database by itself"
    finally:
        await book.close()
    # The operator's commands on Postgres refuse it as well (embedded ones migrate their own file).
    refused = meterway("wallet", "create", "acme", env=clean_env(DATABASE_URL=pg_dsn))
    assert refused.returncode == stores.EXIT_SCHEMA_BEHIND and "meterway migrate" in refused.stderr


@pytest.mark.parametrize("redis_options,message", [
    (("--maxmemory-policy", "allkeys-lru"), "maxmemory-policy 'allkeys-lru'"),
    (("--rename-command", "CONFIG", ""), "redis_policy_check"),
])
def test_serve_refuses_a_redis_that_may_evict_or_hides_its_policy(
        tmp_path: Path, pg_dsn: str, redis_options: tuple[str, ...], message: str) -> None:
    with own_redis(*redis_options) as url:
        env = clean_env(DATABASE_URL=pg_dsn, REDIS_URL=url)
        assert meterway("migrate", env=env).returncode == 0
        result = meterway("serve", "--port", str(free_port()), env=env)
    assert result.returncode == stores.EXIT_REDIS_POLICY, result
    assert message in result.stderr and "noeviction" in result.stderr, result.stderr
    no_traceback(result)


async def test_a_redis_whose_config_is_disabled_is_accepted_when_the_operator_says_so(tmp_path: Path, pg_dsn: str) -> None:
    port = free_port()
    with own_redis("--rename-command", "CONFIG", "") as url:
        env = clean_env(DATABASE_URL=pg_dsn, REDIS_URL=url, MW_REDIS_POLICY_CHECK="false")
        with serving("serve", "--port", str(port), "--migrate", env=env) as process:
            out = read_until(process, "listen:")
            await wait_http(f"http://127.0.0.1:{port}/healthz")
    assert f"holds:     Redis {url}" in out


async def test_a_gateway_refuses_an_evicting_redis_in_process_too(tmp_path: Path, pg_dsn: str) -> None:
    """create_app (the harness, each worker) opens its stores with the same check."""
    with own_redis("--maxmemory-policy", "volatile-lru") as url:
        settings = load_settings(None, database_url=pg_dsn, redis_url=url)
        await stores.migrate(settings)
        with pytest.raises(stores.RedisEvicts, match="volatile-lru"):
            await stores.open_stores(settings)


# --- item 20: expected failures, exit codes, --version, --log-level, help ------------------


def test_expected_failures_print_a_message_and_a_distinct_exit_code_never_a_traceback(tmp_path: Path, pg_dsn: str) -> None:
    closed = free_port()
    cases = {
        "database down": (meterway("wallet", "show", "acme", env=clean_env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{closed}/test")),
                          stores.EXIT_DATABASE_DOWN, "cannot open the ledger at Postgres postgresql://postgres@127.0.0.1"),
        "missing config file": (meterway("--config", str(tmp_path / "nope.toml"), "wallet", "show", "acme"),
                                stores.EXIT_USAGE, "config file not found"),
        "bad argument": (meterway("wallet", "credit", "acme"), stores.EXIT_USAGE, "the following arguments are required"),
        "bad log level": (meterway("--log-level", "loud", "migrate"), stores.EXIT_USAGE, "invalid choice"),
        "unknown wallet": (meterway("wallet", "show", "nobody", env=clean_env(MW_SQLITE_PATH=str(tmp_path / "a.sqlite3"))),
                           stores.EXIT_REFUSED, "no wallet"),
    }
    env = clean_env(DATABASE_URL=pg_dsn, REDIS_URL=f"redis://127.0.0.1:{closed}/0")
    assert meterway("migrate", env=env).returncode == 0
    cases["redis down"] = (meterway("serve", "--port", str(free_port()), env=env), stores.EXIT_REDIS_DOWN,
                           f"cannot reach Redis redis://127.0.0.1:{closed}/0")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        cases["address in use"] = (meterway("serve", "--port", str(busy), env=clean_env(MW_SQLITE_PATH=str(tmp_path / "b.sqlite3"))),
                                   stores.EXIT_CANNOT_LISTEN, "address")
    for name, (result, code, message) in cases.items():
        assert result.returncode == code, (name, result)
        assert message in result.stderr, (name, result.stderr)
        no_traceback(result)
    codes = {stores.EXIT_REFUSED, stores.EXIT_USAGE, stores.EXIT_DATABASE_DOWN, stores.EXIT_REDIS_DOWN,
             stores.EXIT_SCHEMA_BEHIND, stores.EXIT_REDIS_POLICY, stores.EXIT_CANNOT_LISTEN}
    assert len(codes) == 7, "one code per class"


def test_version_log_level_and_help_with_defaults_for_every_command_and_option() -> None:
    version = meterway("--version")
    assert version.returncode == 0 and re.fullmatch(r"meterway \d+\.\d+\.\d+\S*\n", version.stdout), version
    debug = meterway("--log-level", "debug", "wallet", "--help")
    assert debug.returncode == 0

    import argparse

    parser = cli._parser()
    undocumented = []
    for name, sub in _all_parsers(parser):
        assert sub.formatter_class is cli._Formatter, name
        assert sub.description, f"{name} has no description"
        for action in sub._actions:
            if action.dest in ("help", "version") or isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help:
                undocumented.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not undocumented, undocumented
    serve_help = meterway("serve", "--help").stdout
    assert "(default: 1)" in serve_help and "--migrate" in serve_help and "exit codes:" in serve_help
    assert "(default: info)" in meterway("--help").stdout
    for line in cli.EXIT_CODES.strip().splitlines()[1:]:
        code, meaning = line.split(None, 1)
        assert re.search(rf"\| `{code}` \| {re.escape(meaning)} \|", (REPO / "README.md").read_text()), \
            f"README's exit code table lacks {code}: {meaning}"


def _all_parsers(parser, name: str = "meterway") -> Iterator[tuple[str, object]]:
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                if sub_name != "fake-upstream":  # its own parser: `meterway fake-upstream --help`
                    yield from _all_parsers(sub, f"{name} {sub_name}")


@pytest.mark.parametrize("backend", ["embedded"])
async def test_upstream_502_and_504_are_logged_with_the_request_id_never_the_key(gateway_factory, caplog) -> None:
    unreachable = await gateway_factory(f"http://127.0.0.1:{free_port()}/v1")
    _, secret = await unreachable.funded_key("1")
    with caplog.at_level(logging.WARNING, logger="meterway.calls"):
        status, headers, _ = await unreachable.raw_post(
            "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', secret)
    assert status == 502
    [line] = [r.getMessage() for r in caplog.records if _request_id(headers) in r.getMessage()]
    assert "upstream 502" in line and "gpt-4o-mini" in line and "provider fake" in line and "ClientConnectorError" in line
    slow = await gateway_factory(limits={"upstream_total_timeout_s": 0.3})
    _, secret2 = await slow.funded_key("1")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="meterway.calls"):
        status, headers, _ = await slow.raw_post(
            "/v1/chat/completions", b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "FAKE:hang=1"}]}', secret2)
    assert status == 504
    [line] = [r.getMessage() for r in caplog.records if _request_id(headers) in r.getMessage()]
    assert "upstream 504" in line and "Timeout" in line
    assert all(secret not in r.getMessage() and secret2 not in r.getMessage() for r in caplog.records)


def _request_id(headers: dict[str, str]) -> str:
    return {k.lower(): v for k, v in headers.items()}["x-request-id"]


# --- item 21: the Docker image runs as built -------------------------------------------------


def _image_env() -> dict[str, str]:
    """The ENV lines of the Dockerfile (config path rewritten to this checkout's copy of it)."""
    text = (REPO / "Dockerfile").read_text()
    block = re.search(r"^ENV (.*?)(?:\n\n|\nWORKDIR)", text, re.MULTILINE | re.DOTALL)
    assert block is not None
    return dict(re.findall(r"(\w+)=(\S+)", block.group(1)))


def test_the_image_bakes_in_no_fake_provider_and_its_config_comes_from_env_or_a_mounted_file() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "example.toml" not in text, "the example config points at a fake provider on 127.0.0.1:9100"
    assert "cp config/docker.toml /etc/meterway/meterway.toml" in text
    assert "meterway migrate" in text and "REDIS_URL" in text and "MW_METRICS_TOKEN" in text
    env = _image_env()
    assert env["MW_CONFIG"] == "/etc/meterway/meterway.toml" and env["MW_LISTEN__HOST"] == "0.0.0.0"
    settings = load_settings(REPO / "config" / "docker.toml")
    assert settings.providers == {} and settings.models == {}
    readme = (REPO / "README.md").read_text()
    assert "docker run" in readme and "meterway migrate" in readme.split("docker run", 1)[1]


async def test_serving_on_all_interfaces_needs_a_metrics_token(tmp_path: Path) -> None:
    env = clean_env(**{k: v for k, v in _image_env().items() if k != "MW_CONFIG"}
                    | {"MW_SQLITE_PATH": str(tmp_path / "image.sqlite3")})
    port = free_port()
    open_metrics = meterway("--config", str(REPO / "config" / "docker.toml"), "serve", "--port", str(port), env=env)
    assert open_metrics.returncode == stores.EXIT_USAGE and "MW_METRICS_TOKEN" in open_metrics.stderr, open_metrics
    no_traceback(open_metrics)
    with serving("--config", str(REPO / "config" / "docker.toml"), "serve", "--port", str(port),
                 env=env | {"MW_METRICS_TOKEN": METRICS_TOKEN}) as process:
        out = read_until(process, "listen:")
        await wait_http(f"http://127.0.0.1:{port}/healthz")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 401
    assert "providers: none configured" in out and "listen:    http://0.0.0.0:" in out


@pytest.mark.timeout(300)
def test_the_image_install_steps_give_a_working_meterway_in_a_fresh_venv(tmp_path: Path) -> None:
    """What `docker build` does (pip install . of the copied sources), without a Docker daemon:
    a non-editable install in a fresh venv, then the image's commands with its environment."""
    build = tmp_path / "app"
    build.mkdir()
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, build / part)
    for part in ("gateway", "ledger", "payments", "config"):
        shutil.copytree(REPO / part, build / part, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3*", "*.jsonl"))
    # The venv reuses this machine's installed dependencies (no downloads); meterway itself is installed fresh.
    venv.create(tmp_path / "venv", with_pip=True, system_site_packages=True)
    python = tmp_path / "venv" / "bin" / "python"
    started = time.monotonic()
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "."],
                               cwd=build, capture_output=True, text=True, timeout=240)
    assert installed.returncode == 0, installed.stderr
    assert time.monotonic() - started < 240
    data, etc = tmp_path / "data", tmp_path / "etc"
    data.mkdir()
    etc.mkdir()
    shutil.copy(build / "config" / "docker.toml", etc / "meterway.toml")
    image_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PYTHONPATH")
                 and not k.startswith("MW_")} | _image_env() | {
        "MW_CONFIG": str(etc / "meterway.toml"), "MW_SQLITE_PATH": str(data / "meterway.sqlite3")}
    script = str(tmp_path / "venv" / "bin" / "meterway")
    where = subprocess.run([str(python), "-c", "import gateway; print(gateway.__file__)"], cwd=data,
                           env=image_env, capture_output=True, text=True, timeout=60)
    assert str(tmp_path / "venv") in where.stdout, "the fresh install, not this checkout, is what runs"
    version = subprocess.run([script, "--version"], cwd=data, env=image_env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("meterway "), version
    migrated = subprocess.run([script, "migrate"], cwd=data, env=image_env, capture_output=True, text=True, timeout=60)
    assert migrated.returncode == 0 and "applied migrations 0001" in migrated.stdout, migrated
    port = free_port()
    serve = subprocess.Popen([script, "serve", "--port", str(port)], cwd=data, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=image_env | {"MW_METRICS_TOKEN": METRICS_TOKEN})
    try:
        out = read_until(serve, "listen:", timeout_s=60)
        assert "providers: none configured" in out and str(etc / "meterway.toml") in out
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=20)
