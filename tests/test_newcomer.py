"""A newcomer's first minutes: the README's first command gives a gateway that
answers a chat completion with its cost, with nothing else running.

The command's second half (`meterway demo`) is run as the README writes it, in
a subprocess, and the key, `curl` line and SDK snippet it prints are used as
printed. The first half (`pip install -e .`) is what the suite's environment
already did; tests/test_cli_ux.py installs the package fresh for the image.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = "python3 -m pip install -e ."


def readme_first_command() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no command block under 'Two commands'"
    lines = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1, lines
    return lines[0].strip()


def demo_argv(extra: list[str]) -> list[str]:
    """The command's second half, with `meterway` as the installed console script runs it."""
    command = readme_first_command()
    install, _, run = command.partition(" && ")
    assert install == INSTALL, command
    words = shlex.split(run)
    assert words[0] == "meterway", command
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["meterway"] == "gateway.cli:main"
    return [sys.executable, "-m", "gateway.cli", *words[1:], *extra]


def newcomer_env() -> dict[str, str]:
    # A production environment left in the shell must not turn the demo into something else.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    return env | {"PYTHONPATH": str(REPO), "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
                  "REDIS_URL": "redis://127.0.0.1:1/0"}


class Demo:
    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(demo_argv(["--port", "0"]), cwd=cwd, env=newcomer_env(), text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.banner = self._read_banner()

    def _read_banner(self, timeout_s: float = 45) -> str:
        assert self.process.stdout is not None
        lines, deadline = [], time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                _, err = self.process.communicate(timeout=10)
                raise AssertionError(f"the demo exited {self.process.returncode}:\n{''.join(lines)}\n{err}")
            lines.append(line)
            if line.startswith("Ctrl-C stops the demo"):
                return "".join(lines)
        raise AssertionError(f"no banner within {timeout_s} s:\n{''.join(lines)}")

    def line(self, prefix: str) -> str:
        [found] = [line for line in self.banner.splitlines() if line.startswith(prefix)]
        return found

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=30)


def test_the_readme_starts_with_install_and_demo() -> None:
    assert readme_first_command() == "python3 -m pip install -e . && meterway demo"


def test_the_first_command_answers_a_chat_completion_with_its_cost_within_a_minute(tmp_path: Path) -> None:
    started = time.monotonic()
    demo = Demo(tmp_path)
    try:
        key = demo.line("  key:").split()[-1]
        assert re.fullmatch(r"mw-\S{40,}", key), demo.banner
        assert f"SQLite {tmp_path / 'meterway-demo.sqlite3'}" in demo.banner, "the ledger is where the demo says"
        curl = demo.line("curl ")
        assert key in curl
        answer = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert answer.returncode == 0, answer.stderr
        head, _, body = answer.stdout.replace("\r\n", "\n").partition("\n\n")
        assert head.startswith("HTTP/1.1 200"), answer.stdout
        cost = re.search(r"^X-Usage-Cost: (\S+)\r?$", head, re.MULTILINE | re.IGNORECASE)
        assert cost is not None and float(cost.group(1)) > 0, head
        assert '"chat.completion"' in body

        # The SDK snippet, as printed.
        snippet = demo.banner.split("Or with the OpenAI SDK (pip install openai):\n", 1)[1].split("\n\n", 1)[0]
        ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=30)
        assert ran.returncode == 0, ran.stderr
        assert re.match(r"0\.\d+ \S", ran.stdout), ran.stdout
        assert time.monotonic() - started < 60, "the first command must answer within a minute"

        # Even the demo keeps /metrics (revenue per model) closed.
        gateway = demo.line("  gateway:").split()[-1]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{gateway}/metrics", timeout=10)
        assert refused.value.code == 401
    finally:
        assert demo.stop() == 0


def test_rerunning_the_demo_funds_its_wallet_only_once(tmp_path: Path) -> None:
    first = Demo(tmp_path)
    try:
        assert "wallet:   demo, balance 5 USD" in first.banner, first.banner
        answer = subprocess.run(first.line("curl "), shell=True, capture_output=True, text=True, timeout=30)
        cost = re.search(r"^X-Usage-Cost: (\S+)\r?$", answer.stdout, re.MULTILINE | re.IGNORECASE)
        assert cost is not None, answer.stdout
    finally:
        assert first.stop() == 0
    second = Demo(tmp_path)
    try:
        balance = re.search(r"wallet:   demo, balance (\S+) USD", second.banner)
        assert balance is not None
        from decimal import Decimal

        assert Decimal(balance.group(1)) == Decimal("5") - Decimal(cost.group(1)), second.banner
        assert second.line("  key:") != first.line("  key:"), "each run prints a key it can show (keys are stored hashed)"
    finally:
        assert second.stop() == 0
