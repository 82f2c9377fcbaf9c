"""Start the function's runtime as Lambda does (the exec wrapper, given an interpreter), alone or under RIE."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.ports import free_port
from tests.harness.processes import ROOT, ChildProcess, wait_for_port
from tests.harness.sam_cli import python313, rie_binary
from tests.harness.support import TEST_KEY

FUNCTION_DIR = ROOT / "functions" / "chat"
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
            "CHAT_STORE_URL": "none",  # stateless unless a test names a store (never SQLite in the package)
            "POWERTOOLS_METRICS_NAMESPACE": "ChatStreamTest",
            "POWERTOOLS_METRICS_DISABLED": "false",
        }
    )
    env.update(extra)
    return env


RUNTIME_COMMAND = [str(WRAPPER), sys.executable, BOOTSTRAP]


def lambda_runtime(env: dict[str, str]) -> ChildProcess:
    """The runtime (wrapper + loop) as Lambda starts it, its output kept for assertions."""
    return ChildProcess(RUNTIME_COMMAND, env)


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
    with ChildProcess(command, {"AWS_LAMBDA_FUNCTION_TIMEOUT": "30", **env}, cwd=cwd) as process:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/2015-03-31/functions/function/invocations", process
