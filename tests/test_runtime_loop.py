"""The Lambda runtime loop against a Runtime API double: what AWS's emulator cannot show.

The loop runs as Lambda starts it (exec wrapper + interpreter) in a child
process, talks real HTTP to the double, and the real SDK to the fake model.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest

from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Reset, Sleep, Stall, deltas
from tests.harness.lambda_events import function_url_event, rest_event, split_streamed
from tests.harness.processes import ChildProcess
from tests.harness.runtime_api_double import RuntimeAPIDouble
from tests.harness.runtime_process import lambda_runtime, runtime_env
from tests.harness.support import decode_sse, unique


@pytest.fixture
def double() -> Iterator[RuntimeAPIDouble]:
    with RuntimeAPIDouble() as api:
        yield api


@pytest.fixture
def runtime(double: RuntimeAPIDouble, fake: FakeOpenAI) -> Iterator[ChildProcess]:
    env = runtime_env(
        fake,
        AWS_LAMBDA_RUNTIME_API=double.address,
        CHAT_REST_STREAMING_ROUTES="POST /api/chat/stream",
        OPENAI_IDLE_TIMEOUT="5",
    )
    with lambda_runtime(env) as process:
        yield process


def test_chunks_leave_as_the_model_produces_them(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    message = fake.script(unique(), [Delta("one"), Sleep(0.5), Delta(" two"), Sleep(0.5), Delta(" three"), Done()])
    result = double.invoke(function_url_event({"message": message}))
    assert result.kind == "stream"
    assert result.headers["lambda-runtime-function-response-mode"] == "streaming"
    assert result.headers["content-type"] == "application/vnd.awslambda.http-integration-response"
    prelude, body = split_streamed(result.body)
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert decode_sse(body) == [("message", "one"), ("message", " two"), ("message", " three"), ("message", "[DONE]")]
    # Each delta is its own chunk, arriving while the model is still sleeping before the next one.
    arrivals = {data.split(b"data:")[-1].strip(): at for at, data in result.chunks if b"data:" in data}
    assert arrivals[b"two"] - arrivals[b"one"] >= 0.4
    assert arrivals[b"three"] - arrivals[b"two"] >= 0.4
    assert result.trailers == {}


def test_mid_stream_failure_is_in_band_and_in_the_trailers(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    message = fake.script(unique(), [Delta("partial"), Sleep(0.1), Reset()])
    result = double.invoke(function_url_event({"message": message}))
    _, body = split_streamed(result.body)
    events = decode_sse(body)
    assert events[0] == ("message", "partial")
    assert events[-1][0] == "error"
    assert ("message", "[DONE]") not in events
    # The app's stream_trailers (chat/stream_trailers.py) became Lambda's error trailers in the runtime.
    assert result.trailers["lambda-runtime-function-error-type"] == "Function.StreamError"
    detail = json.loads(base64.b64decode(result.trailers["lambda-runtime-function-error-body"]))
    assert detail == {"errorType": "connection", "errorMessage": events[-1][1], "stackTrace": []}


def test_the_stream_ends_cleanly_before_the_deadline(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    message = fake.script(unique(), [Delta("slow"), Stall()])
    deadline_in = 6.0  # room for the first request's SDK import on a loaded machine
    deadline = time.monotonic() + deadline_in
    result = double.invoke(function_url_event({"message": message}), deadline_in=deadline_in)
    _, body = split_streamed(result.body)
    events = decode_sse(body)
    assert events[0] == ("message", "slow")
    assert events[-1] == ("error", "The response time limit was reached; the answer is incomplete.")
    assert result.trailers["lambda-runtime-function-error-type"] == "Function.StreamError"
    # The default 2 s margin: ended with about 2 s to spare, before Lambda would cut it.
    assert 1.0 < deadline - result.finished < 2.5
    (request,) = fake.requests_for(message)
    assert request.closed_event.wait(1)


def test_a_failed_write_cancels_the_upstream_and_the_loop_goes_on(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    words = [f"w{i} " for i in range(200)]
    steps = [step for word in words for step in (Delta(word), Sleep(0.02))]
    message = fake.script(unique(), steps)
    result = double.invoke(function_url_event({"message": message}), hang_up_after_chunks=2)
    assert result.hung_up
    (request,) = fake.requests_for(message)
    assert request.closed_event.wait(1), "the upstream request outlived its caller by more than 1 s"
    assert request.client_closed is not None
    assert request.client_closed - result.finished < 1.0
    follow_up = fake.script(unique(), deltas("still here"))
    after = double.invoke(function_url_event({"message": follow_up}))
    assert decode_sse(split_streamed(after.body)[1])[0] == ("message", "still here")


def test_rest_events_stream_only_on_configured_routes(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    message = fake.script(unique(), deltas("rest", " streamed"))
    streamed = double.invoke(rest_event({"message": message}))
    prelude, body = split_streamed(streamed.body)
    # mangum's REST shape: single values in headers, repeated ones in multiValueHeaders
    assert prelude["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert prelude["multiValueHeaders"] == {}
    assert decode_sse(body)[-1] == ("message", "[DONE]")
    health = rest_event(None)
    health.update(resource="/healthz", path="/healthz", httpMethod="GET", body=None)
    health["requestContext"].update(resourcePath="/healthz", httpMethod="GET")
    buffered = double.invoke(health)
    assert buffered.kind == "response"
    assert buffered.json["statusCode"] == 200
    assert json.loads(str(buffered.json["body"])) == {"status": "ok"}


def test_bad_request_on_a_stream_is_a_clean_status(double: RuntimeAPIDouble, runtime: ChildProcess) -> None:
    result = double.invoke(function_url_event({"wrong": "field"}))
    prelude, body = split_streamed(result.body)
    assert prelude["statusCode"] == 400
    assert json.loads(body) == {"error": "Invalid request body"}


def test_the_chat_page_is_served_at_the_function_urls_root(double: RuntimeAPIDouble, runtime: ChildProcess) -> None:
    result = double.invoke(function_url_event(None, method="GET", path="/"))  # a browser's GET
    prelude, body = split_streamed(result.body)
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in prelude["headers"]["content-security-policy"]
    assert b'<script type="module" src="static/chat.js"></script>' in body


def test_unknown_event_is_an_invocation_error(double: RuntimeAPIDouble, runtime: ChildProcess) -> None:
    result = double.invoke({"Records": [{"eventSource": "aws:sqs"}]})
    assert result.kind == "error"
    assert result.headers["lambda-runtime-function-error-type"] == "Function.Unhandled"
    assert "unable to infer a handler" in str(result.json["errorMessage"])


def test_trace_id_and_request_id_reach_the_logs(
    double: RuntimeAPIDouble, runtime: ChildProcess, fake: FakeOpenAI
) -> None:
    trace = "Root=1-67a1b2c3-0123456789abcdef01234567;Parent=53995c3f42cd8ad8;Sampled=1"
    result = double.invoke(function_url_event({"message": fake.script(unique(), deltas("x"))}), trace_id=trace)
    later = double.invoke(function_url_event({"message": fake.script(unique(), deltas("y"))}))
    double.wait_for_next(3)  # the loop flushes logs and metrics before it asks for the next invocation
    lines = [json.loads(line) for line in runtime.output.splitlines() if line.startswith('{"level"')]
    by_request = {line.get("function_request_id"): line for line in lines}
    first, second = by_request[result.request_id], by_request[later.request_id]
    assert first["xray_trace_id"] == "1-67a1b2c3-0123456789abcdef01234567"
    assert first["cold_start"] is True
    assert second["cold_start"] is False
    assert "xray_trace_id" not in second
    assert first["function_name"] == "chat-stream-chat"
    assert runtime.output.count('"CloudWatchMetrics"') == 2


def test_import_failure_is_reported_to_init_error(double: RuntimeAPIDouble, fake: FakeOpenAI) -> None:
    env = runtime_env(fake, AWS_LAMBDA_RUNTIME_API=double.address, _HANDLER="chat.missing_module.handler")
    with lambda_runtime(env) as process:
        assert process.wait(30) == 1
    ((headers, body),) = double.init_errors
    assert headers["lambda-runtime-function-error-type"] == "Runtime.ImportModuleError"
    assert "chat.missing_module" in json.loads(body)["errorMessage"]


def test_snapstart_waits_for_restore_before_serving(double: RuntimeAPIDouble, fake: FakeOpenAI) -> None:
    env = runtime_env(fake, AWS_LAMBDA_RUNTIME_API=double.address, AWS_LAMBDA_INITIALIZATION_TYPE="snap-start")
    with lambda_runtime(env):
        result = double.invoke(function_url_event({"message": fake.script(unique(), deltas("restored"))}))
    assert decode_sse(split_streamed(result.body)[1])[0] == ("message", "restored")
    assert double.calls[:2] == ["GET /runtime/restore/next", "GET /runtime/invocation/next"]
