"""Upstream failures before and during the stream, timeouts, heartbeats and disconnects."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from tests.harness.fake_openai import (
    Delta,
    FakeOpenAI,
    HeaderDelay,
    Raw,
    Reply,
    Reset,
    Sleep,
    Stall,
    Truncate,
    deltas,
    openai_error,
)
from tests.harness.ports import free_port
from tests.harness.support import TEST_KEY, AppServer, app_server, decode_sse, post_stream, settings_for, unique

DONE = ("message", "[DONE]")


def assert_no_secret(text: str) -> None:
    for fragment in (TEST_KEY, TEST_KEY[-4:], TEST_KEY[:8], TEST_KEY[8:16]):
        assert fragment not in text


# ---------------------------------------------------------------- before the stream


def test_upstream_401_is_502_and_never_quotes_the_key(server: AppServer, fake: FakeOpenAI) -> None:
    masked = f"{TEST_KEY[:8]}{'*' * 20}{TEST_KEY[-4:]}"
    message = f"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com."
    key = fake.script(unique(), [openai_error(401, message, "invalid_request_error")])
    result = post_stream(server.url, {"message": key})
    assert result.status == 502
    assert result.headers["content-type"] == "application/json"
    error = json.loads(result.raw)["error"]
    assert "credentials" in error
    assert "Incorrect API key provided" in error
    assert_no_secret(result.raw.decode())


def test_upstream_429_passes_retry_after(server: AppServer, fake: FakeOpenAI) -> None:
    reply = openai_error(429, "Rate limit reached for requests", "requests")
    key = fake.script(unique(), [Reply(429, reply.body, headers=(("retry-after", "7"),))])
    result = post_stream(server.url, {"message": key})
    assert result.status == 429
    assert result.headers["retry-after"] == "7"
    assert "rate limited" in json.loads(result.raw)["error"]


def test_upstream_429_without_retry_after(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [openai_error(429, "slow down", "requests")])
    result = post_stream(server.url, {"message": key})
    assert result.status == 429
    assert "retry-after" not in result.headers


def test_upstream_500_is_502(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [openai_error(500, "The server had an error", "server_error")])
    result = post_stream(server.url, {"message": key})
    assert result.status == 502
    assert json.loads(result.raw) == {"error": "The model's server failed (HTTP 500)."}


def test_upstream_html_502_is_not_echoed(server: AppServer, fake: FakeOpenAI) -> None:
    html = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    key = fake.script(unique(), [Reply(502, html, content_type="text/html")])
    result = post_stream(server.url, {"message": key})
    assert result.status == 502
    assert b"<html" not in result.raw
    assert "HTTP 502" in json.loads(result.raw)["error"]


def test_upstream_400_message_is_relayed(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [openai_error(400, "This model's maximum context length is 8192 tokens.")])
    result = post_stream(server.url, {"message": key})
    assert result.status == 502
    assert "maximum context length" in json.loads(result.raw)["error"]


def test_unreachable_upstream_is_502(fake: FakeOpenAI) -> None:
    settings = settings_for(fake, openai_base_url=f"http://127.0.0.1:{free_port()}/v1")
    with app_server(settings) as server:
        result = post_stream(server.url, {"message": "hi"})
    assert result.status == 502
    assert json.loads(result.raw) == {"error": "The model's server could not be reached."}


def test_upstream_headers_timeout_is_504(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [HeaderDelay(5), *deltas("late")])
    with app_server(settings_for(fake, first_token_timeout=0.5)) as server:
        started = time.monotonic()
        result = post_stream(server.url, {"message": key})
    assert result.status == 504
    assert time.monotonic() - started < 4
    assert json.loads(result.raw) == {"error": "The model did not answer in time."}


def test_missing_key_names_both_variables(fake: FakeOpenAI) -> None:
    with app_server(settings_for(fake, openai_api_key="")) as server:
        result = post_stream(server.url, {"message": "hi"})
    assert result.status == 500
    error = json.loads(result.raw)["error"]
    assert "OPENAI_API_KEY" in error
    assert "OPENAI_API_KEY_SECRET_ID" in error


# ---------------------------------------------------------------- during the stream


def error_events(events: list[tuple[str, str]]) -> list[str]:
    return [data for name, data in events if name == "error"]


@pytest.mark.parametrize(
    ("steps", "needle"),
    [
        ([Delta("part"), Raw(b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n')], "overloaded"),
        ([Delta("part"), Raw(b'event: error\ndata: {"message":"quota"}\n\n')], "quota"),
        ([Delta("part"), Sleep(0.05), Reset()], "connection to the model"),
        ([Delta("part"), Sleep(0.05), Truncate()], "connection to the model"),
        ([Delta("part"), Raw(b"data: {not json\n\n")], "not valid JSON"),
    ],
    ids=["error object", "error event", "reset", "truncated", "bad json"],
)
def test_mid_stream_failure_ends_with_one_error_and_no_done(
    server: AppServer, fake: FakeOpenAI, steps: list[object], needle: str
) -> None:
    key = fake.script(unique(), steps)  # type: ignore[arg-type]
    result = post_stream(server.url, {"message": key})
    assert result.status == 200
    assert result.events[0] == ("message", "part")
    assert len(error_events(result.events)) == 1
    assert result.events[-1][0] == "error"
    assert needle in result.events[-1][1]
    assert DONE not in result.events


def test_mid_stream_error_message_is_redacted(server: AppServer, fake: FakeOpenAI) -> None:
    leak = json.dumps({"error": {"message": f"bad key {TEST_KEY}"}}).encode()
    key = fake.script(unique(), [Delta("x"), Raw(b"data: " + leak + b"\n\n")])
    result = post_stream(server.url, {"message": key})
    assert result.events[-1][0] == "error"
    assert_no_secret(result.raw.decode())


def test_stall_after_first_delta_ends_with_error(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [Delta("start"), Stall()])
    with app_server(settings_for(fake, idle_timeout=0.5)) as server:
        started = time.monotonic()
        result = post_stream(server.url, {"message": key})
    assert time.monotonic() - started < 4
    assert result.events[0] == ("message", "start")
    assert result.events[-1] == ("error", "The model stopped sending data for 0.5 s.")
    assert fake.requests_for(key)[0].closed_event.wait(2), "the stalled upstream request was not closed"


def test_first_token_wait_is_bounded(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [Raw(b": still thinking\n\n"), Stall()])
    with app_server(settings_for(fake, first_token_timeout=0.7)) as server:
        result = post_stream(server.url, {"message": key})
    assert result.status == 200
    assert result.events == [("error", "The model did not start answering within 0.7 s.")]


def test_slow_first_token_is_allowed_longer_than_idle(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [Raw(b": warming up\n\n"), Sleep(1.0), *deltas("thought")])
    with app_server(settings_for(fake, idle_timeout=0.3, first_token_timeout=5)) as server:
        assert post_stream(server.url, {"message": key}).events == [("message", "thought"), DONE]


# ---------------------------------------------------------------- liveness and timing


def test_headers_arrive_before_the_first_delta(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [Raw(b": accepted\n\n"), Sleep(1.5), *deltas("late")])
    with app_server(settings_for(fake)) as server, httpx.Client(timeout=10) as client:
        started = time.monotonic()
        with client.stream("POST", f"{server.url}/api/chat/stream", json={"message": key}) as response:
            headers_after = time.monotonic() - started
            body = response.read()
    assert response.status_code == 200
    assert headers_after < 1.0
    assert decode_sse(body) == [("message", "late"), DONE]


def test_heartbeat_comments_during_silence(fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [Delta("a"), Sleep(1.0), *deltas("b")])
    with app_server(settings_for(fake, heartbeat_seconds=0.2, idle_timeout=5)) as server:
        result = post_stream(server.url, {"message": key})
    assert result.raw.count(b": keep-alive\n\n") >= 2
    assert result.events == [("message", "a"), ("message", "b"), DONE]


# ---------------------------------------------------------------- client disconnects


def _disconnect_after(url: str, message: str, *, read_first: bool) -> None:
    """Send the request over a raw socket, optionally read a little, then drop the connection."""
    body = json.dumps({"message": message}).encode()
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /api/chat/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        if read_first:
            sock.settimeout(5)
            assert sock.recv(65536)
        else:
            time.sleep(0.3)


@pytest.mark.parametrize(
    ("steps", "read_first"),
    [
        ([Delta("a"), Sleep(0.1), Delta("b"), Sleep(10), *deltas("never")], True),
        ([Delta("a"), Stall()], True),
        ([HeaderDelay(10), *deltas("never")], False),
    ],
    ids=["mid-stream", "during a stall", "before upstream headers"],
)
def test_client_disconnect_cancels_the_upstream_request(
    server: AppServer, fake: FakeOpenAI, steps: list[object], read_first: bool
) -> None:
    key = fake.script(unique(), steps)  # type: ignore[arg-type]
    _disconnect_after(server.url, key, read_first=read_first)
    gone = time.monotonic()
    deadline = gone + 5
    while not fake.requests_for(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    record = fake.requests_for(key)[0]
    assert record.closed_event.wait(5), "upstream request was never closed"
    assert record.client_closed is not None
    assert record.client_closed - gone < 1.0


# ---------------------------------------------------------------- concurrency


def test_200_concurrent_streams_through_one_process(fake: FakeOpenAI) -> None:
    contents = [f"token{i} " for i in range(20)]
    keys = [fake.script(unique("c"), deltas(*contents)) for _ in range(200)]

    async def one(client: httpx.AsyncClient, url: str, key: str) -> tuple[int, list[tuple[str, str]]]:
        response = await client.post(f"{url}/api/chat/stream", json={"message": key})
        return response.status_code, decode_sse(response.content)

    async def run_all(url: str) -> list[tuple[int, list[tuple[str, str]]]]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            return await asyncio.gather(*(one(client, url, key) for key in keys))

    # The model timeouts are not under test here: on a loaded machine 200 streams may wait past the short ones.
    with AppServer(settings_for(fake, first_token_timeout=30.0, idle_timeout=30.0)) as server:
        results = asyncio.run(run_all(server.url))
    expected = [("message", c) for c in contents] + [DONE]
    assert [status for status, _ in results] == [200] * 200
    assert all(events == expected for _, events in results)
