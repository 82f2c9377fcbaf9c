"""Token usage of every request: reported by the model's final chunk, or estimated (and said so).

Real parts: the app under uvicorn, the openai SDK, the fake OpenAI server that sends a
usage chunk like OpenAI's when asked (or ignores the option); the access log line is
read from the Powertools logger's own records.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat import observability
from chat.upstream import DeltaParser
from chat.usage import Usage, estimate_messages, estimate_text, prompt_bound
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Raw, Reset, Stall, Step, UsageChunk, deltas, openai_error
from tests.harness.support import app_server, post_stream, settings_for, unique


class Records(logging.Handler):
    """The service's "chat stream finished" log records, as the Powertools logger emits them."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "chat stream finished":
            self.found.append(record)

    def wait(self, count: int = 1) -> list[dict[str, object]]:
        """The fields of the first `count` records (the line is written just after the last event)."""
        deadline = time.monotonic() + 5
        while len(self.found) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.found) >= count, f"{len(self.found)} access log lines, expected {count}"
        return [record.__dict__ for record in self.found[:count]]


@pytest.fixture
def access_log() -> Iterator[Records]:
    handler = Records()
    target = logging.getLogger(observability.logger.name)
    target.addHandler(handler)
    yield handler
    target.removeHandler(handler)


def test_reported_usage_is_recorded_and_the_stream_is_byte_identical(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("usage"), [Delta("Hello"), Delta(" world"), UsageChunk(17, 2), Done()])
    with app_server(settings_for(fake)) as server:
        result = post_stream(server.url, {"message": key})
    assert result.raw == b"event:message\ndata:Hello\n\nevent:message\ndata:  world\n\nevent:message\ndata:[DONE]\n\n"
    assert fake.requests_for(key)[0].json["stream_options"] == {"include_usage": True}
    (line,) = access_log.wait()
    assert (line["caller"], line["model"], line["outcome"]) == ("local", "fake-model", "complete")
    assert (line["prompt_tokens"], line["completion_tokens"], line["usage"]) == (17, 2, "reported")


def test_usage_follows_what_the_upstream_counted(fake: FakeOpenAI, access_log: Records) -> None:
    """The fake model counts like a real one would: its own prompt count, one token per delta."""
    key = fake.script(unique("counted"), deltas("one", " two", " three"))
    with app_server(settings_for(fake)) as server:
        post_stream(server.url, {"message": key, "history": [{"role": "user", "content": "earlier words here"}]})
    (line,) = access_log.wait()
    expected_prompt = fake.requests_for(key)[0].prompt_tokens
    assert (line["prompt_tokens"], line["completion_tokens"], line["usage"]) == (expected_prompt, 3, "reported")


def estimated(message: str, *answer: str) -> tuple[int, int, str]:
    prompt = estimate_messages([{"role": "user", "content": message}])
    return prompt, sum(estimate_text(part) for part in answer), "estimated"


def fields(line: dict[str, object]) -> tuple[object, object, object]:
    return line["prompt_tokens"], line["completion_tokens"], line["usage"]


def test_an_upstream_that_ignores_the_option_gets_an_estimate(access_log: Records) -> None:
    with FakeOpenAI(report_usage=False) as silent:
        key = silent.script(unique("silent"), deltas("Bonjour", " à", " tous"))
        with app_server(settings_for(silent)) as server:
            result = post_stream(server.url, {"message": key})
    assert result.events[-1] == ("message", "[DONE]")
    (line,) = access_log.wait()
    assert fields(line) == estimated(key, "Bonjour", " à", " tous")
    assert line["outcome"] == "complete"


def test_the_setting_turns_the_option_off(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("off"), deltas("fine"))
    with app_server(settings_for(fake, openai_stream_usage=False)) as server:
        assert post_stream(server.url, {"message": key}).status == 200
    assert "stream_options" not in fake.requests_for(key)[0].json
    assert fields(access_log.wait()[0]) == estimated(key, "fine")


def test_a_cut_stream_is_estimated_from_what_was_relayed(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("cut"), [Delta("partial"), Delta(" answer"), Reset()])
    with app_server(settings_for(fake)) as server:
        result = post_stream(server.url, {"message": key})
    assert result.events[-1][0] == "error"
    (line,) = access_log.wait()
    assert fields(line) == estimated(key, "partial", " answer")
    assert line["outcome"] == "connection"


def test_a_timeout_is_estimated(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("stall"), [Delta("half"), Stall()])
    with app_server(settings_for(fake, idle_timeout=0.3)) as server:
        post_stream(server.url, {"message": key})
    (line,) = access_log.wait()
    assert (line["outcome"], *fields(line)) == ("timeout", *estimated(key, "half"))


def test_a_client_that_leaves_is_estimated(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("leave"), [Delta("first"), Stall()])
    with app_server(settings_for(fake)) as server, httpx.Client(timeout=10) as client:
        with client.stream("POST", f"{server.url}/api/chat/stream", json={"message": key}) as response:
            for chunk in response.iter_bytes():
                if b"first" in chunk:
                    break
        (line,) = access_log.wait()
    assert (line["outcome"], *fields(line)) == ("disconnected", *estimated(key, "first"))


def test_a_refused_request_used_nothing(fake: FakeOpenAI, access_log: Records) -> None:
    key = fake.script(unique("refused"), [openai_error(500, "down", "server_error")])
    with app_server(settings_for(fake)) as server:
        assert post_stream(server.url, {"message": key}).status == 502
    (line,) = access_log.wait()
    assert (line["outcome"], *fields(line)) == ("server_error", 0, 0, "none")


def test_the_parser_keeps_the_usage_chunk_out_of_the_contents() -> None:
    parser = DeltaParser()
    body = (
        b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\n\n'
        b"data: [DONE]\n\n"
    )
    assert parser.feed(body) == ["a"]
    assert parser.usage == Usage(5, 1, "reported")


@pytest.mark.parametrize(
    "usage",
    [{"prompt_tokens": "5", "completion_tokens": 1}, {"prompt_tokens": -1, "completion_tokens": 1}, [], "lots"],
)
def test_a_malformed_usage_object_is_ignored_not_fatal(usage: object) -> None:
    parser = DeltaParser()
    chunk = json.dumps({"choices": [], "usage": usage}).encode()
    assert parser.feed(b"data: " + chunk + b"\n\ndata: [DONE]\n\n") == []
    assert parser.usage is None


def test_a_running_total_keeps_the_last_count(access_log: Records) -> None:
    """Some servers (vLLM's continuous usage stats) put a running total on every content chunk."""
    chunks: list[Step] = [
        Raw(b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":9,"completion_tokens":1}}\n\n'),
        Raw(b'data: {"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n'),
        Done(),
    ]
    with FakeOpenAI(report_usage=False) as upstream:
        key = upstream.script(unique("running"), chunks)
        with app_server(settings_for(upstream)) as server:
            events = post_stream(server.url, {"message": key}).events
    assert events == [("message", "a"), ("message", "b"), ("message", "[DONE]")]
    assert fields(access_log.wait()[0]) == (9, 2, "reported")


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("abcd", 1), ("abcde", 2), ("日本語", 3), ("ab日本", 3), ("a" * 400, 100)],
)
def test_the_estimator_rule(text: str, tokens: int) -> None:
    assert estimate_text(text) == tokens


@pytest.mark.parametrize(("content", "most"), [("1 " * 30_000, 60_000), ("hello", 5), ("日本語", 9), ("", 0)])
def test_a_reservation_counts_each_byte_as_a_token(content: str, most: int) -> None:
    """Byte-level BPE (OpenAI's tokenizers): no token is shorter than a byte. cl100k splits 60 KB of "1 " into
    60,000 tokens, which the estimator puts at 15,007: a budget's reservation must not use the estimate."""
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": content}]
    assert prompt_bound(messages) == 3 + (4 + 8) + (4 + most)
    assert prompt_bound(messages) >= estimate_messages(messages)


def test_token_metrics_have_no_per_caller_dimension() -> None:
    outcome = observability.StreamOutcome(caller="alice", model="m", status=200, usage=Usage(12, 30, "estimated"))
    observability._add_metrics(outcome)
    try:
        emf: dict[str, Any] = dict(observability.metrics.serialize_metric_set())
    finally:
        observability.metrics.clear_metrics()
    assert emf["PromptTokens"] == [12.0]
    assert emf["CompletionTokens"] == [30.0]
    assert emf["UsageEstimated"] == [1.0]
    dimensions = emf["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
    assert dimensions == [["service"]]
    assert "alice" not in json.dumps(emf)
