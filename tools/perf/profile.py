"""`python -m tools.perf profile`: where one request's CPU goes, layer by layer, on the real server.

The app runs under uvicorn in its own process and the fake upstream in another, as in
the benchmark; two-event answers are asked one at a time while py-spy samples the
app (`--gil --nonblocking`: only samples holding the GIL count, so an event loop
waiting in epoll is not counted, and the app is never paused). A sample goes to the
layer of its innermost frame that a rule claims: standard library and pydantic frames
count for the code that called them, and a sample of uvloop's own C code, or of a task
no rule claims a frame of, is the event loop's. The layers' shares of the samples split
the CPU per request read from /proc/<pid>. Each round is sampled on its own and the table
gives the median over rounds: on a busy machine the app is preempted while it holds the
GIL, and a long preemption piles samples on one line of one round.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.app_process import AppProcess, app_env
from tools.perf import callers, stream
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
    "auth and key lookup": (
        ("/chat/auth.py", ()),
        ("/chat/keys.py", ()),
        ("/chat/secrets.py", ()),
        ("/chat/caller.py", ()),
    ),
    "store calls": (("/chat/store/", ()), ("/chat/conversation.py", ())),
    "budgets and usage counters (ledger)": (("/chat/budgets.py", ()), ("/chat/ledger/", ())),
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
DASH = "\N{EN DASH}"
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


@dataclass(frozen=True)
class Round:
    """One sampled round: the app's CPU seconds per request and py-spy's samples per layer."""

    cpu_per_request: float
    counts: collections.Counter[str]

    @classmethod
    def of(cls, cpu_per_request: float, raw_lines: Iterable[str]) -> Round:
        counts, total = shares(raw_lines)
        if total == 0:
            raise PerfError("py-spy recorded no samples")
        return cls(cpu_per_request, counts)

    def ms(self, layer: str) -> float:
        return self.counts[layer] / sum(self.counts.values()) * self.cpu_per_request * 1000


async def _profile(
    app: AppProcess, args: argparse.Namespace, key: str | None, raw: Path, core: set[int] | None
) -> list[Round]:
    """Rounds of two-event answers asked one at a time, each sampled on its own."""
    rounds, requests, rate = args.rounds, args.requests, args.rate
    conversation = stream.Conversation() if args.whole_path else None
    through_app = stream.Target(f"{app.url}{STREAM_PATH}", direct=False, conversation=conversation)
    taken = []
    async with http_client() as client:
        if key is not None:
            client.headers["authorization"] = f"Bearer {key}"
        for _ in range(WARM_UP):
            await stream.first_event_seconds(client, through_app)
        for number in range(rounds):
            await stream.settled(app)
            sampler = Sampler(app.pid, rate, raw / f"round-{number + 1}.txt", core)
            await asyncio.sleep(1.0)  # py-spy attaches
            cpu = app.cpu_seconds()
            for _ in range(requests):
                await stream.first_event_seconds(client, through_app)
            cpu = app.cpu_seconds() - cpu
            taken.append(Round.of(cpu / requests, sampler.stop()))
    return taken


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}{DASH}{max(values):.3f})"


def profile_table(rounds: list[Round]) -> str:
    """Per layer, the median (min-max) over rounds of its CPU per request, and its share of the median total."""
    total = statistics.median(round.cpu_per_request for round in rounds) * 1000
    rows = []
    for layer in [*LAYERS, OTHER]:
        values = [round.ms(layer) for round in rounds]
        if any(values):
            rows.append([layer, _spread(values), f"{statistics.median(values) / total * 100:.1f}"])
    rows.append(["total (CPU per request from /proc)", _spread([r.cpu_per_request * 1000 for r in rounds]), ""])
    return markdown_table(["Layer", f"CPU per request, ms: median (min{DASH}max)", "Share (%)"], rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each sampled on its own (default 5)")
    parser.add_argument("--requests", type=int, default=1000, help="two-event answers per round (default 1000)")
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second (default 1000)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks in this directory")
    parser.add_argument(
        "--whole-path",
        action="store_true",
        help="CHAT_AUTH=keys with a daily budget, every request in a stored conversation of 10 turns",
    )


def command(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.requests < 1:
        raise SystemExit("--rounds and --requests must be at least 1")
    app_core, upstream_core, client_core = stream.cores() or (None, None, None)
    if client_core is not None:
        os.sched_setaffinity(0, client_core)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        raw = args.raw or Path(scratch)
        raw.mkdir(parents=True, exist_ok=True)
        store_url = f"sqlite:///{Path(scratch) / 'chat.sqlite3'}"
        env = {"CHAT_STORE_URL": store_url, **({"CHAT_AUTH": "keys"} if args.whole_path else {})}
        key = callers.create_key(store_url) if args.whole_path else None
        with (
            stream.upstream(upstream_core) as base_url,
            AppProcess(app_env(base_url, **stream.BENCH_ENV, **env), core=app_core) as app,
        ):
            rounds = asyncio.run(_profile(app, args, key, raw, client_core))
    what = "keys + budget + stored conversations (SQLite)" if args.whole_path else "stateless requests, SQLite store"
    print(
        f"{args.rounds} rounds of {args.requests} two-event answers, one at a time, {what}; py-spy samples of "
        f"the app holding the GIL at {args.rate}/s; load average {load:.1f} -> {os.getloadavg()[0]:.1f}.\n"
    )
    print(profile_table(rounds))
    return 0
