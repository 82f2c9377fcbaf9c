"""Start the function's runtime as Lambda does (the exec wrapper, given an interpreter), alone or under RIE."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.ports import free_port
from tests.harness.sam_cli import python313, rie_binary
from tests.harness.support import TEST_KEY

FUNCTION_DIR = Path(__file__).resolve().parents[2] / "functions" / "chat"
WRAPPER = FUNCTION_DIR / "lambda-exec-wrapper"
# What the managed runtime passes after the interpreter; the wrapper must ignore it.
BOOTSTRAP = "/var/runtime/bootstrap.py"


def runtime_env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    """A Lambda-like environment aimed at the fake upstream (the template declares the same variables)."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "OPENAI_", "CHAT_", "_X_AMZN"))
    }
    env.pop("PYTHONPATH", None)
    env.update(
        {
            "LAMBDA_TASK_ROOT": str(FUNCTION_DIR),
            "_HANDLER": "chat.handler.handler",
            "AWS_LAMBDA_FUNCTION_NAME": "chat-stream-chat",
            "AWS_LAMBDA_FUNCTION_VERSION": "7",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_REGION": "eu-west-1",
            "OPENAI_API_KEY": TEST_KEY,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_MODEL": "fake-model",
            "CHAT_FUNCTION_URL_STREAMING": "true",
            "POWERTOOLS_METRICS_NAMESPACE": "ChatStreamTest",
            "POWERTOOLS_METRICS_DISABLED": "false",
        }
    )
    env.update(extra)
    return env


RUNTIME_COMMAND = [str(WRAPPER), sys.executable, BOOTSTRAP]


class ChildProcess:
    """A child process (by default the runtime: wrapper + loop), its output kept for assertions."""

    def __init__(self, env: dict[str, str], command: list[str] = RUNTIME_COMMAND, cwd: Path | None = None) -> None:
        self.env = env
        self.command = command
        self.cwd = cwd
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__, read by `output`
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ChildProcess:
        self.process = subprocess.Popen(
            self.command, env=self.env, cwd=self.cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:  # SAM's Flask server may ignore SIGTERM
            self.process.kill()
            self.process.wait(5)
        self._log.close()

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    @property
    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


def wait_for_port(port: int, what: ChildProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}:\n{what.output}") from None
            time.sleep(0.05)


def packaged_command(package: Path) -> list[str]:
    """A built package's own wrapper, given python3.13 as the managed runtime gives its interpreter."""
    return [str(package / "lambda-exec-wrapper"), str(python313()), BOOTSTRAP]


@contextlib.contextmanager
def emulator(
    env: dict[str, str], runtime: list[str] = RUNTIME_COMMAND, cwd: Path | None = None
) -> Iterator[tuple[str, ChildProcess]]:
    """AWS's Runtime Interface Emulator running our runtime; yields (invoke URL, process)."""
    port = free_port()
    command = [
        str(rie_binary()),
        "--runtime-interface-emulator-address",
        f"127.0.0.1:{port}",
        "--runtime-api-address",
        f"127.0.0.1:{free_port()}",
        *runtime,
    ]
    with ChildProcess({"AWS_LAMBDA_FUNCTION_TIMEOUT": "30", **env}, command, cwd) as process:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations", process
