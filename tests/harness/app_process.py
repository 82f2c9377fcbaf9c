"""The app under uvicorn in a process of its own, configured by environment variables like a deployment.

The performance harness (tools/perf) measures it from outside, its CPU and memory read
from /proc/<pid> so they are the app's alone; the secret-leak test captures its whole
output. The process runs tests/harness/serve_app.py, whose probe route reports the pid
and the live asyncio task count.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.harness.ports import free_port
from tests.harness.processes import ChildProcess
from tests.harness.serve_app import PROBE_PATH, SERVICE_APP

KEY = "sk-harness-FAKE-KEY-QX"  # obviously fake: the fake upstream takes any key
# Credentials for moto and the harness's fake Secrets Manager endpoints (AWS itself cannot run here).
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "1",
}


def app_env(base_url: str, **extra: str) -> dict[str, str]:
    """This environment less the app's settings, aimed at a fake upstream at `base_url`; `extra` adds or overrides."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "CHAT_", "AWS_", "POWERTOOLS_", "PYTHONPATH"))
    }
    return {
        **inherited,
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_MODEL": "fake-model",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }


@dataclass(frozen=True)
class State:
    tasks: int
    cpu_seconds: float
    rss_kib: int
    peak_rss_kib: int


class AppProcess(ChildProcess):
    """`python -m tests.harness.app_process` on a free port; `with` waits until it answers."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        app: str = SERVICE_APP,
        port: int | None = None,
        core: set[int] | None = None,
        debug_logs: bool = False,
    ) -> None:
        self.port = port or free_port()
        command = [sys.executable, "-m", "tests.harness.serve_app", "--port", str(self.port), "--app", app]
        super().__init__([*command, "--debug-logs"] if debug_logs else command, env, core=core)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (exited := self.exited()) is not None:
                raise RuntimeError(f"the app {exited}")
            with contextlib.suppress(httpx.HTTPError):
                if self.probe()["pid"] != self.pid:
                    raise RuntimeError(f"another process answers on port {self.port}")
                return
            time.sleep(0.05)
        raise RuntimeError(f"the app did not answer within {timeout:g} s:\n{self.output[-3000:]}")

    def probe(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.url}{PROBE_PATH}", timeout=10).json()
        return data

    def cpu_seconds(self) -> float:
        """User plus system CPU time, from /proc/<pid>/stat."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> tuple[int, int]:
        """(RSS, peak RSS) in KiB, from /proc/<pid>/status."""
        found = dict(line.split(":", 1) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines())
        return int(found["VmRSS"].split()[0]), int(found["VmHWM"].split()[0])

    def state(self) -> State:
        """Live tasks (asked of the app), CPU and memory (read from /proc)."""
        tasks = self.probe()["tasks"]
        return State(tasks, self.cpu_seconds(), *self.memory_kib())
