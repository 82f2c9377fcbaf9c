"""Each way the upstream, the client or Secrets Manager can fail, and what the service's client must see then.

A fault case scripts the fake upstream for one request (or starts a failing Secrets
Manager endpoint), sends it through the service and returns one table row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from tests.harness.app_process import AWS_TEST_ENV, KEY, AppProcess
from tests.harness.fake_openai import (
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
from tests.harness.stand_in import StandIn
from tools.perf.client import STREAM_PATH, Seen, ask, http_client, post

MiB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """Sizes and timeouts of one load run, set on the command line; the defaults are the full-size run."""

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
    conversations: int = 200
    turns: int = 5
    resumable: int = 200


@dataclass
class FaultRow:
    case: str
    expected: str
    saw: str
    passed: bool


@dataclass
class Case:
    """What a fault case works with: the harness's client, the app, the fake upstream and the run's options."""

    client: httpx.AsyncClient
    service: AppProcess
    fake: FakeOpenAI
    options: Options

    async def ask(self, label: str, steps: Sequence[Step]) -> tuple[Seen, float]:
        """Script the upstream for one request, send it through the app; what came back, and after how long."""
        started = time.perf_counter()
        seen = await post(self.client, self.service.url, self.fake.script(_key(label), steps))
        return seen, time.perf_counter() - started


Fault = Callable[[Case], Awaitable[FaultRow]]


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


async def stall_before_headers(case: Case) -> FaultRow:
    seen, took = await case.ask("stall-headers", [HeaderDelay(case.options.first_token_timeout + 30)])
    ok = _json_error(seen, 504) and took < case.options.first_token_timeout + 2
    return FaultRow("stall before headers", "504 JSON", f"{seen.describe()} after {took:.1f} s", ok)


async def stall_before_first_token(case: Case) -> FaultRow:
    seen, took = await case.ask("stall-first", [Raw(b": waiting\n\n"), Stall()])
    ok = _ended_with_error(seen) and took < case.options.first_token_timeout + 2
    return FaultRow("stall after headers, no token", "event:error", f"{seen.describe()} after {took:.1f} s", ok)


async def stall_mid_stream(case: Case) -> FaultRow:
    seen, took = await case.ask("stall-mid", [Delta("partial"), Stall()])
    ok = _ended_with_error(seen, ["partial"]) and took < case.options.idle_timeout + 2
    return FaultRow("stall mid-stream", "event:error, no [DONE]", f"{seen.describe()} after {took:.1f} s", ok)


async def reset(case: Case) -> FaultRow:
    seen, _ = await case.ask("reset", [Delta("partial"), Reset()])
    return FaultRow("connection reset", "event:error, no [DONE]", seen.describe(), _ended_with_error(seen, ["partial"]))


async def truncated(case: Case) -> FaultRow:
    seen, _ = await case.ask("truncate", [Delta("partial"), Truncate()])
    return FaultRow("truncated body", "event:error, no [DONE]", seen.describe(), _ended_with_error(seen, ["partial"]))


async def stream_error(case: Case) -> FaultRow:
    error = Raw(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    seen, _ = await case.ask("stream-error", [Delta("partial"), error])
    return FaultRow("error object mid-stream", "event:error", seen.describe(), _ended_with_error(seen, ["partial"]))


async def html_502(case: Case) -> FaultRow:
    seen, _ = await case.ask("html", [Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")])
    ok = _json_error(seen, 502) and "<" not in (seen.error or "<")
    return FaultRow("HTML 502 page", "502 JSON, no HTML", seen.describe(), ok)


async def rate_limit_storm(case: Case) -> FaultRow:
    storm = case.options.storm
    body = openai_error(429, "Rate limit reached for requests", "requests").body
    key = case.fake.script(_key("storm"), [Reply(429, body, headers=(("retry-after", "7"),))])
    seen = await asyncio.gather(*(post(case.client, case.service.url, key) for _ in range(storm)))
    bad = [s for s in seen if not (_json_error(s, 429) and s.headers.get("retry-after") == "7")]
    saw = f"{storm - len(bad)}/{storm} got 429 JSON with Retry-After 7" + (f"; e.g. {bad[0].describe()}" if bad else "")
    return FaultRow(f"429 storm ({storm} at once)", "429 JSON + Retry-After", saw, not bad)


async def slow_drip(case: Case) -> FaultRow:
    event = b'data:{"choices":[{"delta":{"content":"drip"}}]}\n\n'
    steps: list[Step] = [Delta("before")]
    for byte in event:
        steps += [Sleep(case.options.drip_interval), Raw(bytes([byte]))]
    seen, took = await case.ask("drip", [*steps, Done()])
    ok = seen.status == 200 and seen.messages == ["before", "drip", "[DONE]"]
    return FaultRow(
        f"slow drip ({len(event)} B, 1 B / {case.options.drip_interval:g} s)",
        "delta intact, [DONE]",
        f"{seen.describe()} after {took:.1f} s",
        ok,
    )


def big_text(size: int) -> str:
    """Deterministic text with words, leading spaces and line breaks, `size` characters long."""
    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyz     \n"
    return "".join(rng.choice(alphabet) for _ in range(size))


async def big_delta(case: Case) -> FaultRow:
    text = big_text(case.options.big_delta_bytes)
    seen, _ = await case.ask("big", deltas(text))
    ok = seen.status == 200 and seen.messages == [text, "[DONE]"]
    got = len(seen.messages[0]) if seen.messages else 0
    size = case.options.big_delta_bytes / MiB
    return FaultRow(f"{size:g} MiB delta", "arrives intact", f"{got} chars, identical: {ok}", ok)


async def _disconnect_once(service: AppProcess, fake: FakeOpenAI, rng: random.Random) -> tuple[str, float | None]:
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


async def client_disconnects(case: Case) -> FaultRow:
    rng, count = random.Random(11), case.options.disconnects
    results = await asyncio.gather(*(_disconnect_once(case.service, case.fake, rng) for _ in range(count)))
    lags = [lag for _, lag in results if lag is not None]
    closed = [lag for lag in lags if lag != float("inf")]
    late = [where for where, lag in results if lag is not None and lag > 1.0]
    saw = (
        f"{len(closed)}/{len(lags)} upstream requests closed, slowest {max(closed, default=0.0) * 1000:.0f} ms"
        f" after its client ({len(results) - len(lags)} clients left before the upstream request)"
    )
    if late:
        saw += f"; late: {', '.join(sorted(set(late)))}"
    return FaultRow(f"random client disconnects ({count})", "upstream closed <= 1 s", saw, not late)


# ---------------------------------------------------------------- Secrets Manager down, throttled, back


STORED_KEY_NAME = "loadtest/openai-key"


def secrets_manager_env(endpoint_port: int) -> dict[str, str]:
    """Environment of the service secrets_manager_rows asks: its key is read from Secrets Manager at endpoint_port."""
    return {
        **AWS_TEST_ENV,
        "OPENAI_API_KEY": "",
        "OPENAI_API_KEY_SECRET_ID": STORED_KEY_NAME,
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{endpoint_port}",
        "CHAT_SECRET_CACHE_SECONDS": "300",
    }


def secrets_manager_rows(fake: FakeOpenAI, options: Options, service: AppProcess, endpoint_port: int) -> list[FaultRow]:
    """Down (closed port), then throttling, then moto on the same port: 503s, then recovery in the same process."""
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    key = fake.script(_key("secret"), deltas("recovered"))

    def ask_once() -> Seen:
        return asyncio.run(ask(service.url, key))

    rows = []
    down = ask_once()
    alive = httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
    rows.append(
        FaultRow(
            "Secrets Manager down",
            "503 JSON, still serving",
            f"{down.describe()}; healthz ok: {alive}",
            _json_error(down, 503) and alive,
        )
    )
    throttling = b'{"__type":"ThrottlingException","message":"Rate exceeded"}'  # as AWS answers when throttling
    with StandIn(400, "application/x-amz-json-1.1", throttling, port=endpoint_port):
        throttled = ask_once()
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
        ).create_secret(Name=STORED_KEY_NAME, SecretString=KEY)
        back = ask_once()
    finally:
        moto.stop()
    same = service.probe()["pid"] == service.pid
    ok = back.status == 200 and back.messages == ["recovered", "[DONE]"] and same
    rows.append(
        FaultRow(
            "Secrets Manager back (moto)", "200 stream, no restart", f"{back.describe()}; same process: {same}", ok
        )
    )
    return rows


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


async def run_all(
    main: AppProcess, secret: AppProcess, fake: FakeOpenAI, options: Options, endpoint_port: int
) -> list[FaultRow]:
    """Every fault case, one row each; the Secrets Manager rows ask `secret`, the rest `main`."""
    async with http_client() as client:
        case = Case(client, main, fake, options)
        busy = asyncio.gather(*(fault(case) for fault in BUSY_FAULTS))
        secret_rows = asyncio.to_thread(secrets_manager_rows, fake, options, secret, endpoint_port)
        first, more = await asyncio.gather(busy, secret_rows)
        waiting = await asyncio.gather(*(fault(case) for fault in WAITING_FAULTS))
    return [*first, *waiting, *more]
