"""`make bench` (`python -m tools.perf bench`): the service's performance figures, as one Markdown table.

Every figure is the median of `--runs` runs, with the min-max beside it; the added
time to first event is a difference taken within one run (upstream alone and through
the app, interleaved). `--baseline` measures an idiomatic relay (tools/perf/baseline.py)
with the same harness, in a second column: the "before" of the optimisations.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass

from tools.perf import callers, cold, cpu_share, stored, stream
from tools.perf.stream import Placement, Sizes
from tools.perf.table import markdown_table

FULL = Sizes(
    single_requests=100, concurrency=200, concurrent_rounds=4, relay_streams=8, relay_events=5000, held_streams=1000
)
QUICK = Sizes(single_requests=4, concurrency=5, concurrent_rounds=2, relay_streams=2, relay_events=50, held_streams=5)
# One stream's added time to first event with the app held to a Lambda CPU share: requests per side.
SHARE_REQUESTS = {FULL: 40, QUICK: 4}
DASH = "\N{EN DASH}"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    digits: int
    target: float | None = None


def rows(sizes: Sizes, cold_start: bool, memory_sizes: list[int]) -> list[Row]:
    stream_rows = [
        Row("ttfe_1_median", "Added time to first event, 1 stream, median (ms)", 2, 1.0),
        Row("ttfe_1_p90", "Added time to first event, 1 stream, p90 (ms)", 2),
        Row("ttfe_n_median", f"Added time to first event, {sizes.concurrency} streams, median (ms)", 1, 100.0),
        Row("ttfe_n_p90", f"Added time to first event, {sizes.concurrency} streams, p90 (ms)", 1),
        Row("request_cpu", "App CPU per request, two-event answer (ms)", 2, 1.0),
        Row("relay_cpu", "Relay cost (CPU-s per 10,000 events)", 2, 1.0),
        Row("relay_rate", f"Relay rate, {sizes.relay_streams} streams, upstream not waiting (events/s)", 0),
        Row("relay_busy", "App's core busy during that relay (%)", 0),
        Row("rss_base", "Base RSS after warm-up (MiB)", 1),
        Row("rss_per_stream", f"RSS per open stream, {sizes.held_streams} streams open (KiB)", 1, 40.0),
        *(
            Row(f"share_ttfe_{mb}", f"Added time to first event, 1 stream, app at {mb} MB's CPU share (ms)", 2)
            for mb in memory_sizes
        ),
    ]
    if not cold_start:
        return stream_rows
    return [
        *stream_rows,
        Row("import_ms", "Handler cold import, python3.13 -X importtime (ms)", 0, 400.0),
        Row("first_answer_ms", "Process start to first relayed answer (ms)", 0, 400.0),
        *(
            Row(f"share_first_answer_{mb}", f"Process start to first relayed answer at {mb} MB's CPU share (ms)", 0)
            for mb in memory_sizes
        ),
        Row("zip_mb", "Zipped package, deflate (MB)", 1, 8.0),
    ]


Figures = dict[str, list[float]]


def _collect(figures: Figures, taken: dict[str, float]) -> None:
    for key, value in taken.items():
        figures.setdefault(key, []).append(value)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure_shares(
    apps: dict[str, str],
    memory_sizes: list[int],
    requests: int,
    runs: int,
    results: dict[str, Figures],
    placement: Placement,
) -> None:
    """One stream's added time to first event, each app held to each memory size's CPU share, interleaved."""
    with stream.upstream(placement[1] if placement is not None else None) as base_url:
        for _ in range(runs):
            for mb in memory_sizes:
                with cpu_share.lambda_share(mb) as share:
                    for name, app in apps.items():
                        added = stream.added_under_share(app, base_url, share, requests, placement)
                        _collect(results[name], {f"share_ttfe_{mb}": added})


def measure_cold_start(
    packages: dict[str, cold.Package],
    memory_sizes: list[int],
    runs: int,
    results: dict[str, Figures],
    placement: Placement,
) -> None:
    """Cold-start figures of each package, interleaved run by run, on the app's core (and at each CPU share)."""
    dirs = {name: cold.built(package) for name, package in packages.items()}
    core = placement[0] if placement is not None else None
    with stream.upstream(placement[1] if placement is not None else None) as base_url:
        for name, package in packages.items():
            cold.first_answer_ms(package, dirs[name], base_url, core)  # warm the page cache
            results[name]["zip_mb"] = [cold.zipped_mb(dirs[name])]
        for _ in range(runs):
            for name, package in packages.items():
                _collect(
                    results[name],
                    {
                        "import_ms": cold.import_ms(package, dirs[name], core),
                        "first_answer_ms": cold.first_answer_ms(package, dirs[name], base_url, core),
                    },
                )
            for mb in memory_sizes:
                with cpu_share.lambda_share(mb) as share:
                    for name, package in packages.items():
                        taken = cold.first_answer_ms(package, dirs[name], base_url, core, share)
                        _collect(results[name], {f"share_first_answer_{mb}": taken})


def _figure(values: list[float], digits: int) -> str:
    median = f"{statistics.median(values):,.{digits}f}"
    if len(values) == 1 or min(values) == max(values):
        return median
    return f"{median} ({min(values):,.{digits}f}{DASH}{max(values):,.{digits}f})"


def table(rows: list[Row], results: dict[str, Figures]) -> str:
    names = list(results)
    head = ["Measure", *(f"{name}: median (min{DASH}max)" for name in names), "Target", "Met"]
    lines = []
    for row in rows:
        cells = [row.label, *(_figure(results[name][row.key], row.digits) for name in names)]
        if row.target is None:
            cells += ["", ""]
        else:
            met = statistics.median(results["service"][row.key]) <= row.target
            cells += [f"≤ {row.target:g}", "yes" if met else "**no**"]
        lines.append(cells)
    return markdown_table(head, lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, not the service")
    parser.add_argument("--skip-cold-start", action="store_true", help="no package build, no cold-start figures")
    parser.add_argument("--baseline", action="store_true", help="also measure the idiomatic relay, in a column")
    parser.add_argument(
        "--lambda-memory",
        type=_memory_sizes,
        default=[512, 1024, 1769],
        help="Lambda memory sizes (MB) whose CPU share the app is held to in the share rows (default 512,1024,1769)",
    )


def _memory_sizes(text: str) -> list[int]:
    sizes = [int(size) for size in text.split(",") if size.strip()]
    if any(size < 128 for size in sizes):
        raise argparse.ArgumentTypeError("Lambda memory sizes start at 128 MB")
    return sizes


def command(args: argparse.Namespace) -> int:
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    sizes = QUICK if args.quick else FULL
    apps = {"service": stream.SERVICE}
    packages = {"service": cold.SERVICE_PACKAGE}
    if args.baseline:
        apps["idiomatic relay"] = stream.BASELINE
        packages["idiomatic relay"] = cold.BASELINE_PACKAGE
    results: dict[str, Figures] = {name: {} for name in apps}
    placement = stream.cores()
    load = os.getloadavg()[0]
    for run in range(args.runs):
        for name, app in apps.items():
            _progress(f"run {run + 1}/{args.runs}: streaming, {name}")
            _collect(results[name], stream.measure(app, sizes, placement))
    _progress("callers and budgets")
    identified: Figures = {}
    with stream.upstream(placement[1] if placement is not None else None) as base_url:
        for _ in range(args.runs):
            _collect(identified, callers.measure(base_url, SHARE_REQUESTS[sizes], placement))
        _progress("stored conversations")
        for _ in range(args.runs):
            _collect(identified, stored.measure(base_url, SHARE_REQUESTS[sizes], placement))
        calls = stored.store_calls(base_url)
    _progress("Lambda CPU shares")
    measure_shares(apps, args.lambda_memory, SHARE_REQUESTS[sizes], args.runs, results, placement)
    if not args.skip_cold_start:
        _progress("cold start")
        measure_cold_start(packages, args.lambda_memory, args.runs, results, placement)
    where = (
        "app, upstream and client on cores " + ", ".join(str(sorted(core)) for core in placement)
        if placement is not None
        else "one core shared by app, upstream and client"
    )
    print(f"{args.runs} run(s){', quick sizes' if args.quick else ''}; {where}.")
    print(f"Load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end.")
    print(f"{cpu_share.describe()}.\n")
    print(table(rows(sizes, not args.skip_cold_start, args.lambda_memory), results))
    print(f"\nCallers and budgets, SQLite store, 1 stream, {SHARE_REQUESTS[sizes]} requests per variant and run:\n")
    print(callers_table(identified))
    print(f"\nStored conversations, SQLite store, 1 stream, {SHARE_REQUESTS[sizes]} requests per variant and run:\n")
    print(stored_table(identified))
    print("\nStore calls per stored request (counted), and when they run:\n")
    print(markdown_table(["Store call", "new", "continued", "when"], stored.calls_table(calls)))
    return 0


CALLER_ROWS = [
    ("callers_no_store", "No store (CHAT_STORE_URL=none): the stateless relay"),
    ("callers_counted", "Store, CHAT_AUTH=none, no budget: usage counted after the answer"),
    ("callers_keyed", "CHAT_AUTH=keys + a daily budget: key lookup (cached) and one reservation write"),
    ("callers_stored", "Keys + budget + a stored conversation (10 turns): the whole path (target ≤ 3)"),
]


def callers_table(figures: Figures) -> str:
    """Added time to first event per caller variant, and what keys + budget add over the stateless relay."""
    lines = [[label, _figure(figures[key], 2)] for key, label in CALLER_ROWS]
    extra = [keyed - plain for keyed, plain in zip(figures["callers_keyed"], figures["callers_no_store"], strict=True)]
    lines.append(["Key lookup + reservation, over the stateless relay", _figure(extra, 2)])
    return markdown_table(["Added time to first event, median (ms)", f"service: median (min{DASH}max)"], lines)


def stored_table(figures: Figures) -> str:
    """Added time to first event of stored requests, and what storing adds over the stateless relay."""
    lines = [[label, _figure(figures[key], 2)] for key, label in stored.ROWS]
    for key, label in (("stored_new", "new"), ("stored_continued", "continued")):
        extra = [a - b for a, b in zip(figures[key], figures["stored_none"], strict=True)]
        lines.append([f"Storing, {label}, over the stateless relay", _figure(extra, 2)])
    return markdown_table(["Added time to first event, median (ms)", f"service: median (min{DASH}max)"], lines)
