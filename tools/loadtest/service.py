"""The app in its own process, configured by environment variables like a deployment.

It runs as a subprocess (`python -m tools.loadtest serve`) so that its memory is
measured on its own, and a probe route added only by this harness reports the
process's RSS, peak RSS, CPU time and live asyncio task count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import httpx

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.ports import free_port
from tools.loadtest.options import Options

ROOT = Path(__file__).resolve().parents[2]
PROBE_PATH = "/_loadtest/state"
LOAD_KEY = "sk-lt-FAKE-HARNESS-KEY-QX"


def serve(port: int, debug_logs: bool) -> None:
    """Run create_app() from the environment under uvicorn, with the harness's probe route."""
    import logging

    import uvicorn

    sys.path.insert(0, str(ROOT / "functions" / "chat"))
    from chat.app import create_app

    if debug_logs:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    uvicorn.run(
        _with_probe(create_app()),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="debug" if debug_logs else "warning",
        backlog=4096,
    )


def _memory_kib() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, from /proc (Linux)."""
    wanted = {"VmRSS:": "rss_kib", "VmHWM:": "peak_rss_kib"}
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            found[wanted[parts[0]]] = int(parts[1])
    return found


def _with_probe(app: Any) -> Any:
    """Wrap the app so GET PROBE_PATH answers with memory and task counts; all else passes through."""

    async def probed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PROBE_PATH:
            cpu_ms = int(time.process_time() * 1000)
            state = {"tasks": len(asyncio.all_tasks()), "pid": os.getpid(), "cpu_ms": cpu_ms, **_memory_kib()}
            body = json.dumps(state).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return probed


class ServiceProcess:
    """The app as a child process configured by environment variables, like a deployment."""

    def __init__(
        self, env: dict[str, str], *, port: int | None = None, log: IO[bytes] | None = None, debug_logs: bool = False
    ) -> None:
        self.port = port or free_port()
        command = [sys.executable, "-m", "tools.loadtest", "serve", "--port", str(self.port)]
        if debug_logs:
            command.append("--debug-logs")
        full_env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": "true", **env}
        target = log if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=target, stderr=target)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    if self.state()["pid"] != self.process.pid:
                        raise RuntimeError(f"another process answers on port {self.port}")
                    return self
            time.sleep(0.05)
        raise RuntimeError("service did not start")

    def state(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.url}{PROBE_PATH}", timeout=10).json()
        return data

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(fake: FakeOpenAI, options: Options, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": LOAD_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "fake-model",
        "OPENAI_FIRST_TOKEN_TIMEOUT": str(options.first_token_timeout),
        "OPENAI_IDLE_TIMEOUT": str(options.idle_timeout),
        **extra,
    }
