"""The runtime loop under AWS's own Runtime Interface Emulator (shipped in aws-sam-cli), no Docker.

RIE hands a streamed response to its invoker buffered, so these tests prove the
protocol is accepted and the bytes are right; timing lives in test_runtime_loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.lambda_events import function_url_event, rest_event, split_streamed
from tests.harness.runtime_process import emulator, runtime_env
from tests.harness.support import decode_sse, unique

CONTENT = ["Hello", " wor", "ld\n", "  spaced", "", "🙂 done"]


@pytest.fixture(scope="module")
def invoke_url(fake: FakeOpenAI) -> Iterator[str]:
    with emulator(runtime_env(fake)) as (url, process):
        yield url
        assert "not accepted" not in process.output, process.output


def expected_events() -> list[tuple[str, str]]:
    # Empty deltas are not events; a trailing "\n" in a delta is an empty data line.
    return [
        ("message", "Hello"),
        ("message", " wor"),
        ("message", "ld\n"),
        ("message", "  spaced"),
        ("message", "🙂 done"),
        ("message", "[DONE]"),
    ]


def test_api_gateway_event_gets_a_proxy_response(invoke_url: str, fake: FakeOpenAI) -> None:
    message = fake.script(unique(), deltas(*CONTENT))
    response = httpx.post(invoke_url, json=rest_event({"message": message}), timeout=30)
    assert response.status_code == 200
    proxy = response.json()
    assert proxy["statusCode"] == 200
    assert proxy["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert decode_sse(proxy["body"].encode()) == expected_events()


def test_function_url_event_is_streamed_and_accepted(invoke_url: str, fake: FakeOpenAI) -> None:
    message = fake.script(unique(), deltas(*CONTENT))
    response = httpx.post(invoke_url, json=function_url_event({"message": message}), timeout=30)
    assert response.status_code == 200
    prelude, body = split_streamed(response.content)
    assert prelude == {
        "statusCode": 200,
        "headers": {**prelude["headers"], "content-type": "text/event-stream; charset=utf-8"},
    }  # mangum's Function URL shape: no "cookies" when there are none
    assert prelude["headers"]["cache-control"] == "no-cache"
    assert decode_sse(body) == expected_events()
    assert body == (
        b"event:message\ndata:Hello\n\n"
        b"event:message\ndata:  wor\n\n"
        b"event:message\ndata:ld\ndata:\n\n"
        b"event:message\ndata:   spaced\n\n"
        b"event:message\ndata:\xf0\x9f\x99\x82 done\n\n"
        b"event:message\ndata:[DONE]\n\n"
    )


def test_bad_body_through_the_emulator_is_the_contract_400(invoke_url: str) -> None:
    response = httpx.post(invoke_url, json=function_url_event({"message": ""}), timeout=30)
    prelude, body = split_streamed(response.content)
    assert prelude["statusCode"] == 400
    assert json.loads(body) == {"error": "Invalid request body"}
