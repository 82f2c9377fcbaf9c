"""`make load` (`python -m tools.perf load`): many concurrent streams through the app, then every fault case.

The app runs in its own process (tests/harness/app_process.py); the upstream is
tests/harness/fake_openai.py in this one, which records every request and when its
client went away, so a round can check that nothing stays open after it. The full-size
run is the default; tests/test_loadtest.py calls `run(Options(...))` with small sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

from tests.harness.app_process import AppProcess, app_env
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Sleep, Step
from tests.harness.ports import free_ports
from tools.perf import conversations, faults, resumable
from tools.perf.client import ask, http_client, post
from tools.perf.faults import FaultRow, Options
from tools.perf.table import markdown_table

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


async def load_round(number: int, service: AppProcess, fake: FakeOpenAI, options: Options) -> LoadRow:
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
    while after.tasks > before.tasks and time.monotonic() < deadline:
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
        rss_before_mib=before.rss_kib / 1024,
        peak_rss_mib=after.peak_rss_kib / 1024,
        rss_after_mib=after.rss_kib / 1024,
        kib_per_stream=(after.peak_rss_kib - before.rss_kib) / max(peak, 1),
        service_cpu_s=after.cpu_seconds - before.cpu_seconds,
        upstream_in_flight_after=_in_flight(fake),
        upstream_idle_open_after=fake.open_connections,
        leftover_tasks=after.tasks - before.tasks,
        first_error=bad[0].describe() if bad else "",
    )


@dataclass
class Report:
    options: Options
    load: list[LoadRow]
    faults: list[FaultRow]
    conversations: conversations.ConversationRow | None = None
    resumable: resumable.ResumableRow | None = None

    @property
    def passed(self) -> bool:
        stored = self.conversations is None or self.conversations.passed
        resumed = self.resumable is None or self.resumable.passed
        return stored and resumed and all(row.passed for row in self.load) and all(row.passed for row in self.faults)


def run(options: Options) -> Report:
    """The load rounds, then the fault cases; the app whose key is in Secrets Manager runs beside the main one."""
    with FakeOpenAI(default=load_script(options.chunks, options.chunk_interval)) as fake:
        timeouts = {
            "OPENAI_FIRST_TOKEN_TIMEOUT": str(options.first_token_timeout),
            "OPENAI_IDLE_TIMEOUT": str(options.idle_timeout),
        }
        main_port, secret_port, endpoint_port = free_ports(3)
        # Default model timeouts here: its first request imports boto3 and asks Secrets Manager before the model.
        secret_env = app_env(fake.base_url, **faults.secrets_manager_env(endpoint_port))
        with (
            AppProcess(app_env(fake.base_url, **timeouts), port=main_port) as main,
            AppProcess(secret_env, port=secret_port) as secret,
        ):
            asyncio.run(ask(main.url, "warm-up"))  # the first request imports the SDK: not a load figure
            load = [asyncio.run(load_round(n + 1, main, fake, options)) for n in range(options.rounds)]
            fault_rows = asyncio.run(faults.run_all(main, secret, fake, options, endpoint_port))
        stored = conversations.run(fake, options) if options.conversations else None
        script = load_script(options.chunks, options.chunk_interval)
        resumed = resumable.run(fake, script, options) if options.resumable else None
    return Report(options, load, fault_rows, stored, resumed)


# The load table's columns: heading, and the cell's format applied to a LoadRow `r`.
COLUMNS = (
    ("round", "{r.round}"),
    ("streams x chunks", "{r.streams} x {r.chunks}"),
    ("errors", "{r.errors}"),
    ("peak concurrent", "{r.peak_in_flight}"),
    ("wall s", "{r.seconds:.1f}"),
    ("TTFB p50 ms", "{r.ttfb_p50_ms:.0f}"),
    ("TTFB p99 ms", "{r.ttfb_p99_ms:.0f}"),
    ("service CPU s", "{r.service_cpu_s:.1f}"),
    ("RSS before MiB", "{r.rss_before_mib:.1f}"),
    ("peak RSS MiB", "{r.peak_rss_mib:.1f}"),
    ("RSS after MiB", "{r.rss_after_mib:.1f}"),
    ("KiB/stream", "{r.kib_per_stream:.1f}"),
    ("upstream in flight after", "{r.upstream_in_flight_after}"),
    ("idle upstream conns", "{r.upstream_idle_open_after}"),
    ("leftover tasks", "{r.leftover_tasks}"),
)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def format_report(report: Report) -> str:
    load_rows = [[cell.format(r=r) for _, cell in COLUMNS] + [_verdict(r.passed)] for r in report.load]
    load = markdown_table([heading for heading, _ in COLUMNS] + ["pass"], load_rows)
    errors = [f"first error in round {r.round}: {r.first_error}" for r in report.load if r.first_error]
    fault_rows = [[f.case, f.expected, f.saw, _verdict(f.passed)] for f in report.faults]
    faults_table = markdown_table(["fault", "expected", "client saw", "pass"], fault_rows)
    options = ", ".join(f"{f.name}={getattr(report.options, f.name)}" for f in fields(report.options))
    lines = ["Options: " + options, "", "Load", load, *errors, "", "Faults", faults_table]
    if report.conversations is not None:
        lines += _round("Conversations (DynamoDB on moto's server)", conversations.COLUMNS, report.conversations)
    if report.resumable is not None:
        title = "Resumable answers (two app processes, DynamoDB on moto's server)"
        lines += _round(title, resumable.COLUMNS, report.resumable)
    return "\n".join(lines)


def _round(
    title: str, columns: Sequence[tuple[str, str]], row: conversations.ConversationRow | resumable.ResumableRow
) -> list[str]:
    """A one-row table of a stored round, its verdict, and its first error if any."""
    cells = [cell.format(r=row) for _, cell in columns] + [_verdict(row.passed)]
    table = markdown_table([heading for heading, _ in columns] + ["pass"], [cells])
    return ["", title, table, *([f"first error: {row.first_error}"] if row.first_error else [])]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    for option in fields(Options):
        default = getattr(defaults, option.name)
        parser.add_argument(f"--{option.name.replace('_', '-')}", type=type(default), default=default)


def command(args: argparse.Namespace) -> int:
    report = run(Options(**{option.name: getattr(args, option.name) for option in fields(Options)}))
    print(format_report(report), flush=True)
    return 0 if report.passed else 1
