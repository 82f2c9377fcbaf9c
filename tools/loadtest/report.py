"""One whole run (load rounds, then the fault cases) and the tables it prints.

`make load` is the full-size run; `run(Options(...))` with small sizes is what
tests/test_loadtest.py calls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, fields

from tests.harness.fake_openai import FakeOpenAI
from tests.harness.ports import free_ports
from tools.loadtest.client import ask, http_client
from tools.loadtest.faults import (
    Fault,
    FaultRow,
    big_delta,
    client_disconnects,
    html_502,
    rate_limit_storm,
    reset,
    secrets_manager_env,
    secrets_manager_rows,
    slow_drip,
    stall_before_first_token,
    stall_before_headers,
    stall_mid_stream,
    stream_error,
    truncated,
)
from tools.loadtest.load import LoadRow, load_round, load_script
from tools.loadtest.options import Options
from tools.loadtest.service import ServiceProcess, service_env

# Busy faults run first, together; then the timing-sensitive disconnects beside the idle waits,
# so the harness's own CPU use (a 1 MiB decode, a 429 storm) cannot delay a client's close.
BUSY_FAULTS: tuple[Fault, ...] = (reset, truncated, stream_error, html_502, rate_limit_storm, big_delta)
WAITING_FAULTS: tuple[Fault, ...] = (
    stall_before_headers,
    stall_before_first_token,
    stall_mid_stream,
    slow_drip,
    client_disconnects,
)


@dataclass
class Report:
    options: Options
    load: list[LoadRow]
    faults: list[FaultRow]

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.load) and all(row.passed for row in self.faults)


def run(options: Options) -> Report:
    with FakeOpenAI(default=load_script(options.chunks, options.chunk_interval)) as fake:
        main_port, secret_port, endpoint_port = free_ports(3)
        main = ServiceProcess(service_env(fake, options), port=main_port)
        secret = ServiceProcess(service_env(fake, options, **secrets_manager_env(endpoint_port)), port=secret_port)
        try:
            main.wait_ready()
            secret.wait_ready()
            asyncio.run(ask(main, "warm-up"))  # the first request imports the SDK: not a load figure
            load = [asyncio.run(load_round(n + 1, main, fake, options)) for n in range(options.rounds)]
            faults = asyncio.run(_faults(main, secret, fake, options, endpoint_port))
        finally:
            main.stop()
            secret.stop()
    return Report(options, load, faults)


async def _faults(
    main: ServiceProcess, secret: ServiceProcess, fake: FakeOpenAI, options: Options, endpoint_port: int
) -> list[FaultRow]:
    async with http_client() as client:
        busy = asyncio.gather(*(fault(client, main, fake, options) for fault in BUSY_FAULTS))
        secret_rows = asyncio.to_thread(secrets_manager_rows, fake, options, secret, endpoint_port)
        first, more = await asyncio.gather(busy, secret_rows)
        waiting = await asyncio.gather(*(fault(client, main, fake, options) for fault in WAITING_FAULTS))
    return [*first, *waiting, *more]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    line = "| " + " | ".join(f"{{:<{width}}}" for width in widths) + " |"
    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line.format(*headers), rule, *(line.format(*row) for row in rows)])


def format_report(report: Report) -> str:
    load = table(
        [
            "round",
            "streams x chunks",
            "errors",
            "peak concurrent",
            "wall s",
            "TTFB p50 ms",
            "TTFB p99 ms",
            "service CPU s",
            "RSS before MiB",
            "peak RSS MiB",
            "RSS after MiB",
            "KiB/stream",
            "upstream in flight after",
            "idle upstream conns",
            "leftover tasks",
            "pass",
        ],
        [
            [
                str(r.round),
                f"{r.streams} x {r.chunks}",
                str(r.errors),
                str(r.peak_in_flight),
                f"{r.seconds:.1f}",
                f"{r.ttfb_p50_ms:.0f}",
                f"{r.ttfb_p99_ms:.0f}",
                f"{r.service_cpu_s:.1f}",
                f"{r.rss_before_mib:.1f}",
                f"{r.peak_rss_mib:.1f}",
                f"{r.rss_after_mib:.1f}",
                f"{r.kib_per_stream:.1f}",
                str(r.upstream_in_flight_after),
                str(r.upstream_idle_open_after),
                str(r.leftover_tasks),
                "PASS" if r.passed else "FAIL",
            ]
            for r in report.load
        ],
    )
    errors = [f"first error in round {r.round}: {r.first_error}" for r in report.load if r.first_error]
    faults = table(
        ["fault", "expected", "client saw", "pass"],
        [[f.case, f.expected, f.saw, "PASS" if f.passed else "FAIL"] for f in report.faults],
    )
    options = ", ".join(f"{f.name}={getattr(report.options, f.name)}" for f in fields(report.options))
    return "\n".join(["Options: " + options, "", "Load", load, *errors, "", "Faults", faults])
