"""`python -m tools.perf profile`: where one request's CPU goes, layer by layer, on the real server.

The app runs under uvicorn in its own process and the fake upstream in another, as in
the benchmark; two-event answers are asked one at a time while py-spy samples the
app (`--gil --nonblocking`: only samples holding the GIL count, so an event loop
waiting in epoll is not counted, and the app is never paused). A sample goes to the
layer of its innermost frame that a rule claims: standard library and pydantic frames
count for the code that called them, and a sample of uvloop's own C code, or of a task
no rule claims a frame of, is the event loop's. The layers' shares of the samples split
the CPU per request read from /proc/<pid>.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tests.harness.app_process import AppProcess, app_env
from tools.perf import stream
from tools.perf.client import STREAM_PATH, PerfError, http_client
from tools.perf.table import markdown_table

# A rule: (path fragment, function-name prefixes, or () for any function in that file).
Rule = tuple[str, tuple[str, ...]]
# The layers in the order a request meets them. A frame belongs to the first rule it matches,
# in the order of RULES below (specific functions before whole files).
LAYERS: dict[str, tuple[Rule, ...]] = {
    "uvicorn (HTTP server)": (("/uvicorn/", ()),),
    "middleware (security headers, CORS)": (
        ("/chat/app.py", ("JSONRefusalCORS",)),
        ("/chat/headers.py", ()),
        ("/starlette/middleware/cors.py", ()),
    ),
    "FastAPI / Starlette (routing, error middleware, request)": (("/fastapi/", ()), ("/starlette/", ())),
    "body parsing": (("/chat/app.py", ("_read_body",)), ("/chat/chat_request.py", ())),
    "auth": (("/chat/app.py", ("_BearerToken",)), ("/chat/secrets.py", ())),
    "store calls": (("/chat/store/", ()),),
    "route handler (app.py)": (("/chat/app.py", ()),),
    "SDK request pipeline": (("/chat/upstream.py", ("Upstream.",)), ("/openai/", ())),
    # anyio and h11 serve only the HTTP client on this path (uvicorn parses HTTP with httptools).
    "HTTP client (httpx2, httpcore2, anyio, h11)": (
        ("/httpx2/", ()),
        ("/httpcore2/", ()),
        ("/anyio/", ()),
        ("/h11/", ()),
    ),
    "relay: delta parsing, SSE framing": (
        ("/chat/relay.py", ()),
        ("/chat/upstream.py", ()),
        ("/chat/sse.py", ()),
        ("/chat/usage.py", ()),
    ),
    "tasks: spawn and wait, watchdog, disconnect listener": (
        ("/chat/relay.py", ("_Watchdog", "_disconnected", "ChatStream.__call__")),
    ),
    "access log line and metrics": (("/chat/observability.py", ()), ("/aws_lambda_powertools/", ())),
    "event loop (uvloop, asyncio)": (("/asyncio/", ("Runner.", "_run", "BaseEventLoop.")),),
    "harness probe wrapper (not in the product)": (("/tests/harness/serve_app.py", ("_with_probe",)),),
}
RULES = sorted(
    ((fragment, functions, layer) for layer, rules in LAYERS.items() for fragment, functions in rules),
    key=lambda rule: not rule[1],  # stable: rules naming functions first, then whole files, each in LAYERS order
)
OTHER = "other"
WARM_UP = 100


def _frame(text: str) -> tuple[str, str]:
    """py-spy's raw frame `function (path:line)` as (function, path)."""
    function, _, where = text.partition(" (")
    return function, where.rpartition(":")[0]


def layer_of(stack: list[str]) -> str:
    """The layer of a sample: its innermost frame that a rule claims, else "other"."""
    for text in reversed(stack):
        function, path = _frame(text)
        for fragment, functions, layer in RULES:
            if fragment in path and (not functions or function.startswith(functions)):
                return layer
    return OTHER


def shares(raw_lines: Iterable[str]) -> tuple[collections.Counter[str], int]:
    """Samples per layer, and the total, from py-spy's raw (collapsed stacks) output."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw_lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            counts[layer_of(stack.split(";"))] += int(count)
    return counts, sum(counts.values())


def _py_spy() -> str:
    found = Path(sys.executable).parent / "py-spy"
    if found.exists():
        return str(found)
    which = shutil.which("py-spy")
    if which is None:
        raise PerfError("py-spy is not installed: .venv/bin/pip install -r requirements.txt")
    return which


class Sampler:
    """py-spy recording the app's process into a raw file until stopped (SIGINT makes it write the file)."""

    def __init__(self, pid: int, rate: int, output: Path, core: set[int] | None) -> None:
        command = [_py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        command += ["--gil", "--nonblocking", "--full-filenames", "--output", str(output)]
        self.output = output
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if core is not None:
            os.sched_setaffinity(self.process.pid, core)

    def stop(self) -> list[str]:
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=60)
        if not self.output.exists():
            raise PerfError(f"py-spy wrote no profile (it needs ptrace rights):\n{stderr.decode()[-2000:]}")
        return self.output.read_text().splitlines()


async def _profile(
    app: AppProcess, requests: int, rate: int, raw: Path, core: set[int] | None
) -> tuple[float, list[str]]:
    """(CPU seconds per request, py-spy's raw lines) over `requests` two-event answers asked one at a time."""
    through_app = stream.Target(f"{app.url}{STREAM_PATH}", direct=False)
    async with http_client() as client:
        for _ in range(WARM_UP):
            await stream.first_event_seconds(client, through_app)
        await stream.settled(app)
        sampler = Sampler(app.pid, rate, raw, core)
        await asyncio.sleep(1.0)  # py-spy attaches
        cpu = app.cpu_seconds()
        for _ in range(requests):
            await stream.first_event_seconds(client, through_app)
        cpu = app.cpu_seconds() - cpu
    return cpu / requests, sampler.stop()


def profile_table(cpu_per_request: float, counts: collections.Counter[str], total: int) -> str:
    rows = [
        [layer, f"{counts[layer] / total * 100:.1f}", f"{counts[layer] / total * cpu_per_request * 1000:.3f}"]
        for layer in [*LAYERS, OTHER]
        if counts[layer]
    ]
    rows.append(["total (CPU per request from /proc)", "100.0", f"{cpu_per_request * 1000:.3f}"])
    return markdown_table(["Layer", "Samples (%)", "CPU per request (ms)"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=2000, help="two-event answers sampled (default 2000)")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second (default 1000)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks in this file")


def command(args: argparse.Namespace) -> int:
    app_core, upstream_core, client_core = stream.cores() or (None, None, None)
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        raw = args.raw or Path(scratch) / "profile.txt"
        with (
            stream.upstream(upstream_core) as base_url,
            AppProcess(app_env(base_url, **stream.BENCH_ENV), core=app_core) as app,
        ):
            cpu, lines = asyncio.run(_profile(app, args.requests, args.rate, raw, client_core))
    counts, total = shares(lines)
    if total == 0:
        raise PerfError("py-spy recorded no samples")
    coverage = total / args.rate / (cpu * args.requests)
    print(
        f"{args.requests} two-event answers one at a time; {total} samples of the app holding the GIL, "
        f"{coverage:.0%} of its CPU time at {args.rate}/s (below 100% for I/O with the GIL released, above "
        f"when other processes preempt it); load average {load:.1f} -> {os.getloadavg()[0]:.1f}.\n"
    )
    print(profile_table(cpu, counts, total))
    return 0
