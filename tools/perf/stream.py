"""The streaming figures of the benchmark: added time to first event, relay cost, memory per stream.

One run starts a fake upstream (tools/perf/upstream.py) and the app as separate
processes, each on its own core where the machine allows, so the CPU and memory
read from /proc/<pid> are the app's alone. The client is httpx in this process,
the same code for the upstream alone and for the app in front of it.
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
from typing import cast

import httpx

from tests.harness.app_process import AppProcess, app_env
from tests.harness.ports import free_port
from tests.harness.processes import ChildProcess, wait_for_port
from tools.perf.client import STREAM_PATH, PerfError, http_client
from tools.perf.cpu_share import Share

SERVICE = "chat.handler:app"
BASELINE = "tools.perf.baseline:app"
# Quiet (no per-request log line), and no idle timeout cutting a relay short.
BENCH_ENV = {"POWERTOOLS_LOG_LEVEL": "WARNING", "OPENAI_IDLE_TIMEOUT": "600"}


@dataclass(frozen=True)
class Sizes:
    single_requests: int  # per side, one at a time, alternating
    concurrency: int
    concurrent_rounds: int  # per side, alternating
    relay_streams: int
    relay_events: int  # per stream
    held_streams: int


@dataclass
class Conversation:
    """A stored conversation that requests continue, started afresh every `turns` requests (a chat's length)."""

    turns: int = 10
    id: str | None = None
    asked: int = 0

    def body(self, message: str) -> dict[str, object]:
        if self.id is None or self.asked % self.turns == 0:
            return {"message": message, "store": True}
        return {"message": message, "conversation_id": self.id}

    def answered(self, headers: httpx.Headers) -> None:
        self.id = headers.get("x-conversation-id", self.id)
        self.asked += 1


@dataclass(frozen=True)
class Target:
    """Where a chat request goes: the upstream's own endpoint, or the app's (stateless, or in a conversation)."""

    url: str
    direct: bool
    conversation: Conversation | None = None

    def body(self, message: str) -> dict[str, object]:
        if self.direct:
            return {"model": "fake-model", "messages": [{"role": "user", "content": message}], "stream": True}
        if self.conversation is not None:
            return self.conversation.body(message)
        return {"message": message}


Placement = tuple[set[int], set[int], set[int]] | None


def cores() -> Placement:
    """(app, upstream, client) core sets, or None with fewer than two cores to share out."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None
    client = available[2:] or available[1:2]
    return {available[0]}, {available[1]}, set(client)


@contextlib.contextmanager
def upstream(core: set[int] | None) -> Iterator[str]:
    """The fake upstream in its own process; yields its base URL."""
    port = free_port()
    command = [sys.executable, "-m", "tools.perf.upstream", str(port)]
    with ChildProcess(command, dict(os.environ), core=core, stdin=subprocess.PIPE) as process:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------- client measurements


async def first_event_seconds(client: httpx.AsyncClient, target: Target, message: str = "ttfe") -> float:
    """Seconds from sending the request to the end of the first SSE event; reads the answer to the end."""
    started = time.perf_counter()
    elapsed: float | None = None
    seen = b""
    async with client.stream("POST", target.url, json=target.body(message)) as response:
        if response.status_code != 200:
            raise PerfError(f"{target.url} answered {response.status_code}: {(await response.aread())[:200]!r}")
        if target.conversation is not None:
            target.conversation.answered(response.headers)
        async for chunk in response.aiter_raw():
            if elapsed is None:
                seen += chunk
                if b"\n\n" in seen:
                    elapsed = time.perf_counter() - started
    if elapsed is None:
        raise PerfError(f"{target.url} sent no event")
    return elapsed


async def settled(app: AppProcess) -> None:
    """Wait until the app has used no CPU for 200 ms (it finished the previous phase's work), at most 10 s."""
    deadline = time.monotonic() + 10
    used = app.cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = app.cpu_seconds()
        if now == used:
            return
        used = now


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


async def added_first_event(
    client: httpx.AsyncClient, direct: Target, through_app: Target, app: AppProcess, concurrency: int, rounds: int
) -> tuple[float, float, float]:
    """(median, p90) seconds the app adds to the first event, and the app's CPU seconds per request.

    Batches go to the upstream alone and through the app in turn; the app is idle
    while the upstream alone answers, so its CPU time is all its own requests'.
    """
    times: dict[bool, list[float]] = {True: [], False: []}
    cpu = app.cpu_seconds()
    for index in range(rounds):
        for target in (direct, through_app) if index % 2 == 0 else (through_app, direct):
            batch = await asyncio.gather(*(first_event_seconds(client, target) for _ in range(concurrency)))
            times[target.direct] += batch
    alone, through = times[True], times[False]
    added = statistics.median(through) - statistics.median(alone), p90(through) - p90(alone)
    return *added, (app.cpu_seconds() - cpu) / len(through)


async def _relayed(client: httpx.AsyncClient, target: Target, events: int) -> int:
    async with client.stream("POST", target.url, json=target.body(f"relay:{events}")) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return body.count(b"data:tok\n")


async def relay(
    client: httpx.AsyncClient, target: Target, app: AppProcess, streams: int, events: int
) -> tuple[float, float, float]:
    """(CPU-s per 10,000 events, events/s, share of a core busy) relaying an upstream that never waits."""
    cpu, started = app.cpu_seconds(), time.perf_counter()
    counts = await asyncio.gather(*(_relayed(client, target, events) for _ in range(streams)))
    wall, cpu = time.perf_counter() - started, app.cpu_seconds() - cpu
    total = sum(counts)
    if total != streams * events:
        raise PerfError(f"relayed {total} events, expected {streams * events}")
    return cpu / total * 10_000, total / wall, cpu / wall


async def rss_with_streams_open(client: httpx.AsyncClient, target: Target, app: AppProcess, streams: int) -> int:
    """The app's RSS (KiB) while `streams` streams are open end to end (each has had its first event)."""
    opened = 0
    all_open, release = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        nonlocal opened
        async with client.stream("POST", target.url, json=target.body("hold")) as response:
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
        return app.memory_kib()[0]
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _measure(app: AppProcess, base_url: str, sizes: Sizes) -> dict[str, float]:
    direct = Target(f"{base_url}/chat/completions", direct=True)
    through_app = Target(f"{app.url}{STREAM_PATH}", direct=False)
    async with http_client() as client:
        for target in (direct, through_app):
            for _ in range(5):
                await first_event_seconds(client, target)
            await asyncio.gather(*(first_event_seconds(client, target) for _ in range(20)))
        await settled(app)
        figures = {"rss_base": app.memory_kib()[0] / 1024}
        held = await rss_with_streams_open(client, through_app, app, sizes.held_streams)
        await settled(app)
        figures["rss_per_stream"] = (held / 1024 - figures["rss_base"]) * 1024 / sizes.held_streams
        figures["ttfe_1_median"], figures["ttfe_1_p90"], figures["request_cpu"] = await added_first_event(
            client, direct, through_app, app, 1, sizes.single_requests
        )
        figures["ttfe_n_median"], figures["ttfe_n_p90"], _ = await added_first_event(
            client, direct, through_app, app, sizes.concurrency, sizes.concurrent_rounds
        )
        await settled(app)
        figures["relay_cpu"], figures["relay_rate"], figures["relay_busy"] = await relay(
            client, through_app, app, sizes.relay_streams, sizes.relay_events
        )
    for key in ("ttfe_1_median", "ttfe_1_p90", "ttfe_n_median", "ttfe_n_p90", "request_cpu"):
        figures[key] *= 1000
    figures["relay_busy"] *= 100
    return figures


def measure(app: str, sizes: Sizes, placement: Placement) -> dict[str, float]:
    """One run's streaming figures for the ASGI app `app`, with fresh processes, placed on `cores()`."""
    app_core, upstream_core, client_core = placement if placement is not None else (None, None, None)
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    with upstream(upstream_core) as base_url, AppProcess(app_env(base_url, **BENCH_ENV), app=app, core=app_core) as p:
        return asyncio.run(_measure(p, base_url, sizes))


async def _added_under_share(app: AppProcess, base_url: str, share: Share, requests: int) -> float:
    direct = Target(f"{base_url}/chat/completions", direct=True)
    through_app = Target(f"{app.url}{STREAM_PATH}", direct=False)
    async with http_client() as client:
        for target in (direct, through_app):  # warmed as in `measure`: first calls build clients, stores, threads
            for _ in range(5):
                await first_event_seconds(client, target)
            await asyncio.gather(*(first_event_seconds(client, target) for _ in range(20)))
        await settled(app)
        added, _, cpu = await added_first_event(client, direct, through_app, app, 1, requests)
    return share.wall_seconds(added, cpu) * 1000


def added_under_share(app: str, base_url: str, share: Share, requests: int, placement: Placement) -> float:
    """Milliseconds the app adds to the first event at one stream (median), its process held to `share`."""
    app_core, _, client_core = placement if placement is not None else (None, None, None)
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    with AppProcess(app_env(base_url, **BENCH_ENV), app=app, core=app_core) as process:
        share.add(process.pid)
        return asyncio.run(_added_under_share(process, base_url, share, requests))
