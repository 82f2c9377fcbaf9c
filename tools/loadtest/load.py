"""Many concurrent streams through the service at once: errors, latency, memory and what is left behind.

The upstream is tests/harness/fake_openai.py on 127.0.0.1, which records every request and
when its client went away, so a round can check that nothing stays open after it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Sleep, Step
from tools.loadtest.client import http_client, post
from tools.loadtest.options import Options
from tools.loadtest.service import ServiceProcess

# The openai SDK's connection pool keeps at most this many idle upstream connections.
SDK_KEEPALIVE_CONNECTIONS = 100


@dataclass
class LoadRow:
    round: int
    streams: int
    chunks: int
    errors: int
    peak_in_flight: int
    seconds: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    rss_before_mib: float
    peak_rss_mib: float
    rss_after_mib: float
    kib_per_stream: float
    service_cpu_s: float
    upstream_in_flight_after: int
    upstream_idle_open_after: int
    leftover_tasks: int
    first_error: str = ""

    @property
    def passed(self) -> bool:
        return (
            self.errors == 0
            and self.upstream_in_flight_after == 0
            and self.upstream_idle_open_after <= SDK_KEEPALIVE_CONNECTIONS
            and self.leftover_tasks <= 0
        )


def load_script(chunks: int, interval: float) -> Callable[[str], Sequence[Step]]:
    def script(message: str) -> list[Step]:
        steps: list[Step] = []
        for index in range(chunks):
            steps.append(Delta(f" tok{index}"))
            if interval:
                steps.append(Sleep(interval))
        steps.append(Done())
        return steps

    return script


def _in_flight(fake: FakeOpenAI) -> int:
    return sum(1 for record in fake.requests if record.finished is None)


async def _settle(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def load_round(number: int, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> LoadRow:
    expected = [f" tok{index}" for index in range(options.chunks)] + ["[DONE]"]
    before = await asyncio.to_thread(service.state)
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _in_flight(fake))
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    started = time.perf_counter()
    async with http_client() as client:
        seen = await asyncio.gather(*(post(client, service.url, f"load {i}") for i in range(options.streams)))
    seconds = time.perf_counter() - started
    stop.set()
    await sampler
    bad = [s for s in seen if s.status != 200 or s.messages != expected]
    await _settle(lambda: _in_flight(fake) == 0, 5)
    after = await asyncio.to_thread(service.state)
    deadline = time.monotonic() + 5
    while after["tasks"] > before["tasks"] and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        after = await asyncio.to_thread(service.state)
    ttfb = sorted(s.first_event for s in seen if s.first_event is not None)
    cuts = statistics.quantiles(ttfb, n=100) if len(ttfb) > 1 else ttfb * 99
    return LoadRow(
        round=number,
        streams=options.streams,
        chunks=options.chunks,
        errors=len(bad),
        peak_in_flight=peak,
        seconds=seconds,
        ttfb_p50_ms=statistics.median(ttfb) * 1000 if ttfb else float("nan"),
        ttfb_p99_ms=cuts[98] * 1000 if cuts else float("nan"),
        rss_before_mib=before["rss_kib"] / 1024,
        peak_rss_mib=after["peak_rss_kib"] / 1024,
        rss_after_mib=after["rss_kib"] / 1024,
        kib_per_stream=(after["peak_rss_kib"] - before["rss_kib"]) / max(peak, 1),
        service_cpu_s=(after["cpu_ms"] - before["cpu_ms"]) / 1000,
        upstream_in_flight_after=_in_flight(fake),
        upstream_idle_open_after=fake.open_connections,
        leftover_tasks=after["tasks"] - before["tasks"],
        first_error=bad[0].describe() if bad else "",
    )
