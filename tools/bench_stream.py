"""The streaming figures of `make bench`: added time to first event, relay cost, memory per stream.

One run starts a fake upstream (tools/bench_upstream.py) and the app under uvicorn
as separate processes, each on its own core where the machine allows, so the CPU
and memory read from /proc/<pid> are the app's alone. The client is httpx in this
process, the same code for the upstream alone and for the app in front of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx

from tests.harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fake-model"


class BenchError(RuntimeError):
    """The harness could not take a measurement (a process failed, an answer was wrong)."""


@dataclass(frozen=True)
class App:
    """An ASGI app under test: uvicorn's import string and the directory it is imported from."""

    name: str
    target: str
    app_dir: Path


SERVICE = App("service", "chat.handler:app", ROOT / "functions" / "chat")
BASELINE = App("idiomatic relay", "tools.bench_baseline:app", ROOT)


@dataclass(frozen=True)
class Sizes:
    single_requests: int  # per side, one at a time, alternating
    concurrency: int
    concurrent_rounds: int  # per side, alternating
    relay_streams: int
    relay_events: int  # per stream
    held_streams: int


@dataclass(frozen=True)
class Target:
    """Where a chat request goes: the upstream's own endpoint, or the app's."""

    url: str
    direct: bool

    def body(self, message: str) -> dict[str, object]:
        if self.direct:
            return {"model": MODEL, "messages": [{"role": "user", "content": message}], "stream": True}
        return {"message": message}


# ---------------------------------------------------------------- processes and /proc


Placement = tuple[set[int], set[int], set[int]] | None


def cores() -> Placement:
    """(app, upstream, client) core sets, or None with fewer than two cores to share out."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    client = available[2:] or available[1:2]
    return {available[0]}, {available[1]}, set(client)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        process.stdin.close()
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def upstream(core: set[int] | None) -> Iterator[str]:
    """The fake upstream in its own process; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.bench_upstream"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        if core is not None:
            os.sched_setaffinity(process.pid, core)
        assert process.stdout is not None
        base_url = process.stdout.readline().decode().strip()
        if not base_url:
            raise BenchError("the fake upstream did not start")
        yield base_url
    finally:
        _stop(process)


def app_env(base_url: str) -> dict[str, str]:
    """The app's environment: aimed at the fake upstream, quiet, no metrics, no early timeouts."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENAI_API_KEY": "sk-bench",
        "OPENAI_BASE_URL": base_url,
        "OPENAI_MODEL": MODEL,
        "OPENAI_IDLE_TIMEOUT": "600",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@contextlib.contextmanager
def serve(app: App, base_url: str, core: set[int] | None) -> Iterator[tuple[str, int]]:
    """The app under uvicorn in its own process; yields (its URL, its pid)."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app.target, "--app-dir", str(app.app_dir)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    # uvicorn's 5 s keep-alive limit would race the client's reuse of idle connections between phases.
    command += ["--timeout-keep-alive", "600"]
    process = subprocess.Popen(command, cwd=ROOT, env=app_env(base_url), stdin=subprocess.DEVNULL)
    try:
        if core is not None:
            os.sched_setaffinity(process.pid, core)
        url = f"http://127.0.0.1:{port}"
        _wait_listening(url, process)
        yield url, process.pid
    finally:
        _stop(process)


def _wait_listening(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"the app exited with status {process.returncode} before listening")
        with contextlib.suppress(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=1)
            return
        time.sleep(0.05)
    raise BenchError("the app did not start listening within 60 s")


# ---------------------------------------------------------------- client measurements


async def first_event_seconds(client: httpx.AsyncClient, target: Target, message: str = "ttfe") -> float:
    """Seconds from sending the request to the end of the first SSE event; reads the answer to the end."""
    started = time.perf_counter()
    elapsed: float | None = None
    seen = b""
    async with client.stream("POST", target.url, json=target.body(message)) as response:
        if response.status_code != 200:
            raise BenchError(f"{target.url} answered {response.status_code}")
        async for chunk in response.aiter_raw():
            if elapsed is None:
                seen += chunk
                if b"\n\n" in seen:
                    elapsed = time.perf_counter() - started
    if elapsed is None:
        raise BenchError(f"{target.url} sent no event")
    return elapsed


async def settled(pid: int) -> None:
    """Wait until the app has used no CPU for 200 ms (it finished the previous phase's work), at most 10 s."""
    deadline = time.monotonic() + 10
    used = cpu_seconds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = cpu_seconds(pid)
        if now == used:
            return
        used = now


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


async def added_first_event(
    client: httpx.AsyncClient, direct: Target, app: Target, pid: int, concurrency: int, rounds: int
) -> tuple[float, float, float]:
    """(median, p90) seconds the app adds to the first event, and the app's CPU seconds per request.

    Batches go to the upstream alone and through the app in turn; the app is idle
    while the upstream alone answers, so its CPU time is all its own requests'.
    """
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu = cpu_seconds(pid)
    for index in range(rounds):
        for target in (direct, app) if index % 2 == 0 else (app, direct):
            batch = await asyncio.gather(*(first_event_seconds(client, target) for _ in range(concurrency)))
            times[target.direct] += batch
    alone, through = times[True], times[False]
    added = statistics.median(through) - statistics.median(alone), p90(through) - p90(alone)
    return *added, (cpu_seconds(pid) - cpu) / len(through)


async def _relayed(client: httpx.AsyncClient, app: Target, events: int) -> int:
    async with client.stream("POST", app.url, json=app.body(f"relay:{events}")) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return body.count(b"data:tok\n")


async def relay(
    client: httpx.AsyncClient, app: Target, pid: int, streams: int, events: int
) -> tuple[float, float, float]:
    """(CPU-s per 10,000 events, events/s, share of a core busy) relaying an upstream that never waits."""
    cpu, started = cpu_seconds(pid), time.perf_counter()
    counts = await asyncio.gather(*(_relayed(client, app, events) for _ in range(streams)))
    wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    total = sum(counts)
    if total != streams * events:
        raise BenchError(f"relayed {total} events, expected {streams * events}")
    return cpu / total * 10_000, total / wall, cpu / wall


async def rss_with_streams_open(client: httpx.AsyncClient, app: Target, pid: int, streams: int) -> int:
    """The app's RSS while `streams` streams are open end to end (each has had its first event)."""
    opened = 0
    all_open, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        nonlocal opened
        async with client.stream("POST", app.url, json=app.body("hold")) as response:
            first_read = cast(AsyncGenerator[bytes, None], response.aiter_raw())
            async with contextlib.aclosing(first_read) as chunks:
                await anext(chunks)
                opened += 1
                if opened == streams:
                    all_open.set()
                await release.wait()

    tasks = [asyncio.ensure_future(hold()) for _ in range(streams)]
    try:
        await asyncio.wait_for(all_open.wait(), 120)
        await asyncio.sleep(0.5)
        return rss_bytes(pid)
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _measure(app_url: str, base_url: str, pid: int, sizes: Sizes) -> dict[str, float]:
    direct = Target(f"{base_url}/chat/completions", direct=True)
    app = Target(f"{app_url}/api/chat/stream", direct=False)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=sizes.held_streams + sizes.concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        for target in (direct, app):
            for _ in range(5):
                await first_event_seconds(client, target)
            await asyncio.gather(*(first_event_seconds(client, target) for _ in range(20)))
        await settled(pid)
        figures = {"rss_base": rss_bytes(pid) / 2**20}
        held = await rss_with_streams_open(client, app, pid, sizes.held_streams)
        await settled(pid)
        figures["rss_per_stream"] = (held / 2**20 - figures["rss_base"]) * 1024 / sizes.held_streams
        figures["ttfe_1_median"], figures["ttfe_1_p90"], figures["request_cpu"] = await added_first_event(
            client, direct, app, pid, 1, sizes.single_requests
        )
        figures["ttfe_n_median"], figures["ttfe_n_p90"], _ = await added_first_event(
            client, direct, app, pid, sizes.concurrency, sizes.concurrent_rounds
        )
        await settled(pid)
        figures["relay_cpu"], figures["relay_rate"], figures["relay_busy"] = await relay(
            client, app, pid, sizes.relay_streams, sizes.relay_events
        )
    for key in ("ttfe_1_median", "ttfe_1_p90", "ttfe_n_median", "ttfe_n_p90", "request_cpu"):
        figures[key] *= 1000
    figures["relay_busy"] *= 100
    return figures


def measure(app: App, sizes: Sizes, placement: Placement) -> dict[str, float]:
    """One run's streaming figures for `app`, with fresh processes, placed on `cores()`."""
    app_core, upstream_core, client_core = placement if placement is not None else (None, None, None)
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    with upstream(upstream_core) as base_url, serve(app, base_url, app_core) as (app_url, pid):
        return asyncio.run(_measure(app_url, base_url, pid, sizes))
