"""Stored conversations under our Lambda runtime: Function URL events through the Runtime API double.

Two runtime processes stand for two Lambda instances (each with its own Runtime API
double), sharing the DynamoDB table as deployed instances do: moto's server stands in
for DynamoDB (AWS cannot run here), the table created from template.yaml. The caller is
the IAM principal in the event's `requestContext.authorizer`, as the Function URL sets it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from chat.conversation import STOPPED
from tests.harness import dynamodb
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Sleep, Stall, Step, deltas
from tests.harness.lambda_events import function_url_event, split_streamed
from tests.harness.processes import ChildProcess
from tests.harness.runtime_api_double import Result, RuntimeAPIDouble
from tests.harness.runtime_process import lambda_runtime, runtime_env
from tests.harness.support import decode_sse, unique
from tests.test_resumable import parse

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"


class Instance:
    """One Lambda instance: a Runtime API double and our runtime polling it."""

    def __init__(self, double: RuntimeAPIDouble, runtime: ChildProcess) -> None:
        self.double = double
        self.runtime = runtime

    def call(self, method: str, path: str, body: object = None, caller: str = ALICE) -> tuple[dict[str, Any], bytes]:
        result = self.double.invoke(function_url_event(body, method=method, path=path, caller_arn=caller))
        return split_streamed(result.body)


@pytest.fixture(scope="module")
def table_env() -> Iterator[dict[str, str]]:
    table = unique("chat")  # moto's server keeps its tables for the life of the test process
    with dynamodb.moto_server() as endpoint:
        dynamodb.create_table(dynamodb.client(endpoint), table)
        yield dynamodb.server_env(endpoint, table)


@pytest.fixture
def instances(fake: FakeOpenAI, table_env: dict[str, str]) -> Iterator[tuple[Instance, Instance]]:
    env = {
        **table_env,
        "CHAT_STOP_POLL_SECONDS": "0.25",
        "CHAT_RESUME_BATCH_SECONDS": "0.1",
        "CHAT_RESUME_POLL_SECONDS": "0.1",
        "OPENAI_IDLE_TIMEOUT": "20",
        "POWERTOOLS_METRICS_DISABLED": "true",
    }
    with RuntimeAPIDouble() as first_api, RuntimeAPIDouble() as second_api:
        first_env = runtime_env(fake, AWS_LAMBDA_RUNTIME_API=first_api.address, **env)
        second_env = runtime_env(fake, AWS_LAMBDA_RUNTIME_API=second_api.address, **env)
        with lambda_runtime(first_env) as first, lambda_runtime(second_env) as second:
            yield Instance(first_api, first), Instance(second_api, second)


def test_a_conversation_continues_across_invocations_on_two_instances(
    instances: tuple[Instance, Instance], fake: FakeOpenAI
) -> None:
    first, second = instances
    opening = fake.script(unique("open"), deltas("Hello"))
    prelude, body = first.call("POST", "/api/chat/stream", {"message": opening, "store": True})
    assert prelude["statusCode"] == 200
    conversation_id = prelude["headers"]["x-conversation-id"]
    assert decode_sse(body)[-1] == ("message", "[DONE]")

    follow_up = fake.script(unique("follow"), deltas("Again"))
    prelude, body = second.call("POST", "/api/chat/stream", {"message": follow_up, "conversation_id": conversation_id})
    assert prelude["statusCode"] == 200
    [upstream] = fake.requests_for(follow_up)
    sent: Any = upstream.json["messages"]
    assert [m["content"] for m in sent] == [opening, "Hello", follow_up]

    prelude, body = first.call("GET", f"/api/conversations/{conversation_id}")
    assert prelude["statusCode"] == 200
    stored = json.loads(body)
    assert [(m["content"], m["status"]) for m in stored["messages"]] == [
        (opening, "complete"),
        ("Hello", "complete"),
        (follow_up, "complete"),
        ("Again", "complete"),
    ]
    prelude, body = second.call("GET", f"/api/conversations/{conversation_id}", caller=BOB)
    assert (prelude["statusCode"], json.loads(body)) == (404, {"error": "Conversation not found."})


def test_stop_from_a_second_invocation_ends_the_first_within_2_s(
    instances: tuple[Instance, Instance], fake: FakeOpenAI
) -> None:
    first, second = instances
    key = fake.script(unique("endless"), [Delta("partial"), Stall()])
    streaming: Result = first.double.begin(
        function_url_event({"message": key, "store": True}, caller_arn=ALICE), deadline_in=60
    )
    deadline = time.monotonic() + 10
    while b"partial" not in b"".join(chunk for _, chunk in streaming.chunks):
        assert time.monotonic() < deadline, "the first invocation never streamed"
        time.sleep(0.01)
    prelude, _ = split_streamed(b"".join(chunk for _, chunk in streaming.chunks))
    conversation_id = prelude["headers"]["x-conversation-id"]

    asked = time.monotonic()
    stop_prelude, _ = second.call("POST", f"/api/conversations/{conversation_id}/stop")
    assert stop_prelude["statusCode"] == 202
    assert streaming.done.wait(5)
    took = time.monotonic() - asked
    assert took < 2.0
    _, body = split_streamed(streaming.body)
    assert decode_sse(body)[-1] == ("error", STOPPED)
    [upstream] = fake.requests_for(key)
    assert upstream.closed_event.wait(2)

    _, body = second.call("GET", f"/api/conversations/{conversation_id}")
    assert [(m["content"], m["status"]) for m in json.loads(body)["messages"]] == [
        (key, "complete"),
        ("partial", "stopped"),
    ]


def _streamed_so_far(streaming: Result, events: int) -> bytes:
    """The SSE body of an invocation in progress, once it holds at least `events` events."""
    deadline = time.monotonic() + 10
    while True:
        streamed = b"".join(chunk for _, chunk in streaming.chunks)
        if b"\0" * 8 in streamed:  # past the prelude
            _, body = split_streamed(streamed)
            if body.count(b"\n\n") >= events:
                return body
        assert time.monotonic() < deadline, "the invocation never streamed"
        time.sleep(0.01)


def test_a_resumable_answer_resumes_in_an_invocation_on_another_instance(
    instances: tuple[Instance, Instance], fake: FakeOpenAI
) -> None:
    first, second = instances
    words = ["One", " two", " three", " four", " five", " six"]
    steps: list[Step] = [step for word in words for step in (Delta(word), Sleep(0.15))]
    key = fake.script(unique("paced"), [*steps, Done()])
    body = {"message": key, "store": True, "resumable": True}
    streaming = first.double.begin(function_url_event(body, caller_arn=ALICE), deadline_in=60)
    so_far = _streamed_so_far(streaming, 2)
    conversation_id = split_streamed(b"".join(chunk for _, chunk in streaming.chunks))[0]["headers"][
        "x-conversation-id"
    ]
    before = parse(so_far[: so_far.rindex(b"\n\n") + 2])
    resume = function_url_event(
        None,
        {"last-event-id": str(before[-1][0])},
        method="GET",
        path=f"/api/conversations/{conversation_id}/stream",
        caller_arn=ALICE,
    )
    prelude, rest = split_streamed(second.double.invoke(resume).body)
    assert prelude["statusCode"] == 200
    whole = [(event, data) for _, event, data in before + parse(rest)]
    assert whole == [*[("message", word) for word in words], ("message", "[DONE]")]
    assert streaming.done.wait(5)


def test_a_follower_ends_before_its_invocation_deadline(instances: tuple[Instance, Instance], fake: FakeOpenAI) -> None:
    first, second = instances
    key = fake.script(unique("endless"), [Delta("partial"), Stall()])
    streaming = first.double.begin(
        function_url_event({"message": key, "store": True, "resumable": True}, caller_arn=ALICE), deadline_in=60
    )
    _streamed_so_far(streaming, 1)
    conversation_id = split_streamed(b"".join(chunk for _, chunk in streaming.chunks))[0]["headers"][
        "x-conversation-id"
    ]
    follow = function_url_event(
        None, method="GET", path=f"/api/conversations/{conversation_id}/stream", caller_arn=ALICE
    )
    started = time.monotonic()
    result = second.double.invoke(follow, deadline_in=4)  # the margin is 2 s: it must end at about 2 s
    took = time.monotonic() - started
    prelude, body = split_streamed(result.body)
    assert prelude["statusCode"] == 200
    assert 1.5 < took < 4
    assert [(event, data) for _, event, data in parse(body)] == [("message", "partial")]  # no end: not over
    stop, _ = second.call("POST", f"/api/conversations/{conversation_id}/stop")
    assert stop["statusCode"] == 202
    assert streaming.done.wait(5)
    assert decode_sse(split_streamed(streaming.body)[1])[-1] == ("error", STOPPED)
