"""Child processes the tests and the performance harness start: always stopped, their output kept to read."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class ChildProcess:
    """A command, from the repository's root unless told, maybe pinned to cores; stopped by terminate, then kill."""

    def __init__(
        self,
        command: list[str],
        env: dict[str, str],
        *,
        cwd: Path | None = None,
        core: set[int] | None = None,
        stdin: int = subprocess.DEVNULL,
    ) -> None:
        self.command = command
        self.env = env
        self.cwd = cwd or ROOT
        self.core = core
        self._stdin = stdin
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - outlives stop(): `output` is read after it
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChildProcess:
        self.process = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdin=self._stdin, stdout=self._log, stderr=subprocess.STDOUT
        )
        if self.core is not None:
            os.sched_setaffinity(self.process.pid, self.core)
        return self

    def stop(self) -> None:
        assert self.process is not None
        if self.process.stdin is not None:
            self.process.stdin.close()  # a child that serves until its input closes ends by itself
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # SAM's Flask server may ignore SIGTERM
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> ChildProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def exited(self) -> str | None:
        """None while running; else what it said, for an error message."""
        assert self.process is not None
        if self.process.poll() is None:
            return None
        return f"exited with status {self.process.returncode}:\n{self.output[-3000:]}"

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
            if (exited := what.exited()) is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}: {exited or what.output}") from None
            time.sleep(0.05)
