"""Load and fault harness: the real app in its own process, a scripted upstream, printed tables.

The service runs as a subprocess (`python -m tools.loadtest serve`) so its memory is
measured on its own, and a probe route added only by this harness reports the
process's RSS, peak RSS and live asyncio task count. The upstream is
tools/fake_openai.py on 127.0.0.1, which records every request and when its client
went away. `make load` is the full-size run; `run(Options(...))` with small sizes
is what tests/test_loadtest.py calls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import httpx
from httpx_sse import EventSource

from tools.fake_openai import (
    Delta,
    Done,
    FakeOpenAI,
    HeaderDelay,
    Raw,
    Reply,
    Reset,
    Sleep,
    Stall,
    Step,
    Truncate,
    deltas,
    openai_error,
)

ROOT = Path(__file__).resolve().parent.parent
PROBE_PATH = "/_loadtest/state"
STREAM_PATH = "/api/chat/stream"
STORED_KEY_NAME = "loadtest/openai-key"
LOAD_KEY = "sk-lt-Qm7Xw2Zp9Rv4Kd8N"
# The openai SDK's connection pool keeps at most this many idle upstream connections.
SDK_KEEPALIVE_CONNECTIONS = 100
MiB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """Sizes and timeouts of one run; the defaults are the full-size run."""

    streams: int = 1000
    chunks: int = 50
    chunk_interval: float = 0.02
    rounds: int = 2
    first_token_timeout: float = 10.0
    idle_timeout: float = 3.0
    drip_interval: float = 1.0
    storm: int = 200
    disconnects: int = 100
    big_delta_bytes: int = MiB


# ---------------------------------------------------------------- the service process


def serve(port: int, debug_logs: bool) -> None:
    """Run create_app() from the environment under uvicorn, with the harness's probe route."""
    import logging

    import uvicorn

    sys.path.insert(0, str(ROOT / "functions" / "chat"))
    from chat.app import create_app

    if debug_logs:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    uvicorn.run(
        _with_probe(create_app()),
        host="127.0.0.1",
        port=port,
        lifespan="off",
        log_level="debug" if debug_logs else "warning",
        backlog=4096,
    )


def _memory_kib() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, from /proc (Linux)."""
    wanted = {"VmRSS:": "rss_kib", "VmHWM:": "peak_rss_kib"}
    found: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            found[wanted[parts[0]]] = int(parts[1])
    return found


def _with_probe(app: Any) -> Any:
    """Wrap the app so GET PROBE_PATH answers with memory and task counts; all else passes through."""

    async def probed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PROBE_PATH:
            cpu_ms = int(time.process_time() * 1000)
            state = {"tasks": len(asyncio.all_tasks()), "pid": os.getpid(), "cpu_ms": cpu_ms, **_memory_kib()}
            body = json.dumps(state).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return probed


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports (all held open while choosing, so two callers never share one)."""
    import socket

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class ServiceProcess:
    """The app as a child process configured by environment variables, like a deployment."""

    def __init__(
        self, env: dict[str, str], *, port: int | None = None, log: IO[bytes] | None = None, debug_logs: bool = False
    ) -> None:
        self.port = port or free_ports(1)[0]
        command = [sys.executable, "-m", "tools.loadtest", "serve", "--port", str(self.port)]
        if debug_logs:
            command.append("--debug-logs")
        full_env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": "true", **env}
        target = log if log is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=target, stderr=target)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    if self.state()["pid"] != self.process.pid:
                        raise RuntimeError(f"another process answers on port {self.port}")
                    return self
            time.sleep(0.05)
        raise RuntimeError("service did not start")

    def state(self) -> dict[str, int]:
        data: dict[str, int] = httpx.get(f"{self.url}{PROBE_PATH}", timeout=10).json()
        return data

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self.wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service_env(fake: FakeOpenAI, options: Options, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_API_KEY": LOAD_KEY,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_MODEL": "fake-model",
        "OPENAI_FIRST_TOKEN_TIMEOUT": str(options.first_token_timeout),
        "OPENAI_IDLE_TIMEOUT": str(options.idle_timeout),
        **extra,
    }


# ---------------------------------------------------------------- reading a stream


@dataclass
class Seen:
    """What one client saw: the status, JSON error or SSE events, and when the first event came."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    first_event: float | None = None
    failure: str | None = None

    @property
    def messages(self) -> list[str]:
        return [data for event, data in self.events if event == "message"]

    def describe(self) -> str:
        if self.failure:
            return self.failure
        if self.error is not None:
            retry = f", Retry-After {self.headers['retry-after']}" if "retry-after" in self.headers else ""
            return f"{self.status} JSON{retry}: {self.error[:60]}"
        last = self.events[-1] if self.events else ("", "")
        return f"{self.status}, {len(self.events)} events, last {last[0]}:{last[1][:60]}"


async def post(client: httpx.AsyncClient, base_url: str, message: str) -> Seen:
    """POST one chat message and read the whole answer, as a standard SSE client would."""
    seen = Seen()
    started = time.perf_counter()
    try:
        async with client.stream("POST", f"{base_url}{STREAM_PATH}", json={"message": message}) as response:
            seen.status = response.status_code
            seen.headers = dict(response.headers)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                body = await response.aread()
                try:
                    seen.error = json.loads(body)["error"]
                except (ValueError, KeyError, TypeError):
                    seen.failure = f"{seen.status} non-JSON body {body[:60]!r}"
                return seen
            async for event in EventSource(response).aiter_sse():
                if seen.first_event is None:
                    seen.first_event = time.perf_counter() - started
                seen.events.append((event.event, event.data))
    except httpx.HTTPError as error:
        seen.failure = f"{type(error).__name__}: {error}"
    return seen


def _client() -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


# ---------------------------------------------------------------- load


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
    async with _client() as client:
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


# ---------------------------------------------------------------- faults


@dataclass
class FaultRow:
    case: str
    expected: str
    saw: str
    passed: bool


Fault = Callable[[httpx.AsyncClient, ServiceProcess, FakeOpenAI, Options], Awaitable[FaultRow]]


def _key(label: str) -> str:
    return f"{label}-{random.getrandbits(48):012x}"


def _ended_with_error(seen: Seen, keep: Sequence[str] = ()) -> bool:
    return (
        seen.status == 200
        and bool(seen.events)
        and seen.events[-1][0] == "error"
        and ("message", "[DONE]") not in seen.events
        and seen.messages == list(keep)
    )


def _json_error(seen: Seen, status: int) -> bool:
    return seen.status == status and bool(seen.error) and seen.headers.get("content-type") == "application/json"


async def stall_before_headers(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    key = fake.script(_key("stall-headers"), [HeaderDelay(options.first_token_timeout + 30)])
    started = time.perf_counter()
    seen = await post(client, service.url, key)
    took = time.perf_counter() - started
    ok = _json_error(seen, 504) and took < options.first_token_timeout + 2
    return FaultRow("stall before headers", "504 JSON", f"{seen.describe()} after {took:.1f} s", ok)


async def stall_before_first_token(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    key = fake.script(_key("stall-first"), [Raw(b": waiting\n\n"), Stall()])
    started = time.perf_counter()
    seen = await post(client, service.url, key)
    took = time.perf_counter() - started
    ok = _ended_with_error(seen) and took < options.first_token_timeout + 2
    return FaultRow("stall after headers, no token", "event:error", f"{seen.describe()} after {took:.1f} s", ok)


async def stall_mid_stream(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    key = fake.script(_key("stall-mid"), [Delta("partial"), Stall()])
    started = time.perf_counter()
    seen = await post(client, service.url, key)
    took = time.perf_counter() - started
    ok = _ended_with_error(seen, ["partial"]) and took < options.idle_timeout + 2
    return FaultRow("stall mid-stream", "event:error, no [DONE]", f"{seen.describe()} after {took:.1f} s", ok)


async def reset(client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> FaultRow:
    seen = await post(client, service.url, fake.script(_key("reset"), [Delta("partial"), Reset()]))
    return FaultRow("connection reset", "event:error, no [DONE]", seen.describe(), _ended_with_error(seen, ["partial"]))


async def truncated(client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> FaultRow:
    seen = await post(client, service.url, fake.script(_key("truncate"), [Delta("partial"), Truncate()]))
    return FaultRow("truncated body", "event:error, no [DONE]", seen.describe(), _ended_with_error(seen, ["partial"]))


async def stream_error(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    error = Raw(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    seen = await post(client, service.url, fake.script(_key("stream-error"), [Delta("partial"), error]))
    return FaultRow("error object mid-stream", "event:error", seen.describe(), _ended_with_error(seen, ["partial"]))


async def html_502(client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> FaultRow:
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    seen = await post(client, service.url, fake.script(_key("html"), [Reply(502, page, "text/html")]))
    ok = _json_error(seen, 502) and "<" not in (seen.error or "<")
    return FaultRow("HTML 502 page", "502 JSON, no HTML", seen.describe(), ok)


async def rate_limit_storm(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    body = openai_error(429, "Rate limit reached for requests", "requests").body
    key = fake.script(_key("storm"), [Reply(429, body, headers=(("retry-after", "7"),))])
    seen = await asyncio.gather(*(post(client, service.url, key) for _ in range(options.storm)))
    good = sum(1 for s in seen if _json_error(s, 429) and s.headers.get("retry-after") == "7")
    saw = f"{good}/{options.storm} got 429 JSON with Retry-After 7"
    bad = next((s for s in seen if not (_json_error(s, 429) and s.headers.get("retry-after") == "7")), None)
    return FaultRow(
        f"429 storm ({options.storm} at once)",
        "429 JSON + Retry-After",
        saw + (f"; e.g. {bad.describe()}" if bad else ""),
        good == options.storm,
    )


async def slow_drip(client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> FaultRow:
    event = b'data:{"choices":[{"delta":{"content":"drip"}}]}\n\n'
    steps: list[Step] = [Delta("before")]
    for byte in event:
        steps += [Sleep(options.drip_interval), Raw(bytes([byte]))]
    steps.append(Done())
    started = time.perf_counter()
    seen = await post(client, service.url, fake.script(_key("drip"), steps))
    took = time.perf_counter() - started
    ok = seen.status == 200 and seen.messages == ["before", "drip", "[DONE]"]
    return FaultRow(
        f"slow drip ({len(event)} B, 1 B / {options.drip_interval:g} s)",
        "delta intact, [DONE]",
        f"{seen.describe()} after {took:.1f} s",
        ok,
    )


def big_text(size: int) -> str:
    """Deterministic text with words, leading spaces and line breaks, `size` characters long."""
    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyz     \n"
    return "".join(rng.choice(alphabet) for _ in range(size))


async def big_delta(client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options) -> FaultRow:
    text = big_text(options.big_delta_bytes)
    seen = await post(client, service.url, fake.script(_key("big"), deltas(text)))
    ok = seen.status == 200 and seen.messages == [text, "[DONE]"]
    got = len(seen.messages[0]) if seen.messages else 0
    return FaultRow(
        f"{options.big_delta_bytes / MiB:g} MiB delta", "arrives intact", f"{got} chars, identical: {ok}", ok
    )


async def _disconnect_once(service: ServiceProcess, fake: FakeOpenAI, rng: random.Random) -> tuple[str, float | None]:
    """One client that leaves at a random point; returns (where, upstream close lag or None if never opened)."""
    where = rng.choice(["before upstream headers", "mid-stream", "during a stall"])
    script: list[Step]
    if where == "before upstream headers":
        script = [HeaderDelay(30)]
    elif where == "mid-stream":
        script = [step for _ in range(200) for step in (Delta("x"), Sleep(0.05))]
    else:
        script = [Delta("x"), Stall()]
    key = fake.script(_key("leave"), script)
    body = json.dumps({"message": key}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (STREAM_PATH.encode(), len(body), body)
    )
    await writer.drain()
    if where == "before upstream headers":
        await asyncio.sleep(rng.uniform(0.05, 0.5))
    else:
        wanted = rng.randint(1, 5) if where == "mid-stream" else 1
        received = b""
        while received.count(b"event:message") < wanted:
            chunk = await reader.read(4096)
            if not chunk:
                break
            received += chunk
        await asyncio.sleep(rng.uniform(0, 0.3))
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    left = time.monotonic()
    deadline = left + 2
    while time.monotonic() < deadline:
        records = fake.requests_for(key)
        if records and records[0].client_closed is not None:
            return where, max(0.0, records[0].client_closed - left)
        await asyncio.sleep(0.01)
    records = fake.requests_for(key)
    return where, (None if not records else float("inf"))


async def client_disconnects(
    client: httpx.AsyncClient, service: ServiceProcess, fake: FakeOpenAI, options: Options
) -> FaultRow:
    rng = random.Random(11)
    results = await asyncio.gather(*(_disconnect_once(service, fake, rng) for _ in range(options.disconnects)))
    lags = [lag for _, lag in results if lag is not None]
    closed = [lag for lag in lags if lag != float("inf")]
    late = [where for where, lag in results if lag is not None and lag > 1.0]
    saw = (
        f"{len(closed)}/{len(lags)} upstream requests closed, slowest {max(closed, default=0.0) * 1000:.0f} ms"
        f" after its client ({len(results) - len(lags)} clients left before the upstream request)"
    )
    if late:
        saw += f"; late: {', '.join(sorted(set(late)))}"
    return FaultRow(f"random client disconnects ({options.disconnects})", "upstream closed <= 1 s", saw, not late)


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


# ---------------------------------------------------------------- Secrets Manager down, throttled, back


class _Throttling(http.server.BaseHTTPRequestHandler):
    """Answers every Secrets Manager call the way AWS does when throttling."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        body = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'
        self.send_response(400)
        self.send_header("content-type", "application/x-amz-json-1.1")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the table is the output."""


@contextlib.contextmanager
def throttling_endpoint(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_MAX_ATTEMPTS": "1",
}


def secrets_manager_rows(
    fake: FakeOpenAI, options: Options, service: ServiceProcess, endpoint_port: int
) -> list[FaultRow]:
    """Down (closed port), then throttling, then moto on the same port: 503s, then recovery in the same process."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    key = fake.script(_key("secret"), deltas("recovered"))
    pid = service.state()["pid"]

    def ask() -> Seen:
        return asyncio.run(_ask(service, key))

    rows = []
    down = ask()
    alive = httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
    rows.append(
        FaultRow(
            "Secrets Manager down",
            "503 JSON, still serving",
            f"{down.describe()}; healthz ok: {alive}",
            _json_error(down, 503) and alive,
        )
    )
    with throttling_endpoint(endpoint_port):
        throttled = ask()
    rows.append(FaultRow("Secrets Manager throttling", "503 JSON", throttled.describe(), _json_error(throttled, 503)))
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=endpoint_port, verbose=False)
    moto.start()
    try:
        boto3.client(
            "secretsmanager",
            endpoint_url=f"http://127.0.0.1:{endpoint_port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - moto's dummy credentials
        ).create_secret(Name=STORED_KEY_NAME, SecretString=LOAD_KEY)
        back = ask()
    finally:
        moto.stop()
    same = service.state()["pid"] == pid
    ok = back.status == 200 and back.messages == ["recovered", "[DONE]"] and same
    rows.append(
        FaultRow(
            "Secrets Manager back (moto)", "200 stream, no restart", f"{back.describe()}; same process: {same}", ok
        )
    )
    return rows


async def _ask(service: ServiceProcess, message: str) -> Seen:
    async with _client() as client:
        return await post(client, service.url, message)


# ---------------------------------------------------------------- the run


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
        secret_env = {
            **AWS_TEST_ENV,
            "OPENAI_API_KEY": "",
            "OPENAI_API_KEY_SECRET_ID": STORED_KEY_NAME,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{endpoint_port}",
            "CHAT_SECRET_CACHE_SECONDS": "300",
        }
        main = ServiceProcess(service_env(fake, options), port=main_port)
        secret = ServiceProcess(service_env(fake, options, **secret_env), port=secret_port)
        try:
            main.wait_ready()
            secret.wait_ready()
            asyncio.run(_ask(main, "warm-up"))  # the first request imports the SDK: not a load figure
            load = [asyncio.run(load_round(n + 1, main, fake, options)) for n in range(options.rounds)]
            faults = asyncio.run(_faults(main, secret, fake, options, endpoint_port))
        finally:
            main.stop()
            secret.stop()
    return Report(options, load, faults)


async def _faults(
    main: ServiceProcess, secret: ServiceProcess, fake: FakeOpenAI, options: Options, endpoint_port: int
) -> list[FaultRow]:
    async with _client() as client:
        busy = asyncio.gather(*(fault(client, main, fake, options) for fault in BUSY_FAULTS))
        secret_rows = asyncio.to_thread(secrets_manager_rows, fake, options, secret, endpoint_port)
        first, more = await asyncio.gather(busy, secret_rows)
        waiting = await asyncio.gather(*(fault(client, main, fake, options) for fault in WAITING_FAULTS))
    return [*first, *waiting, *more]


# ---------------------------------------------------------------- printing


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    serve_parser = sub.add_parser("serve", help="run the service (used by the harness)")
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--debug-logs", action="store_true")
    defaults = Options()
    for option in fields(Options):
        parser.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(getattr(defaults, option.name)),
            default=getattr(defaults, option.name),
        )
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.debug_logs)
        return
    report = run(Options(**{option.name: getattr(args, option.name) for option in fields(Options)}))
    print(format_report(report), flush=True)
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
