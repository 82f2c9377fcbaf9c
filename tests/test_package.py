"""The package that ships, run as Lambda runs it: built by the project's build, started by its own wrapper.

The runtime tests run the wrapper and the loop from the source tree; this one
runs the x86_64 twin of the deployed package (same Makefile target, same pruning
and bytecode) under AWS's Runtime Interface Emulator, with python3.13 and
nothing else on the path: a module the streaming path needs that the build
drops, or ships as bytecode that does not load, fails the stream here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.lambda_events import function_url_event, split_streamed
from tests.harness.runtime_process import emulator, packaged_command, runtime_env
from tests.harness.support import decode_sse, unique


@pytest.fixture(scope="module")
def packaged_url(x86_64_twin: Path, fake: FakeOpenAI) -> Iterator[str]:
    env = runtime_env(fake, LAMBDA_TASK_ROOT=str(x86_64_twin))
    with emulator(env, packaged_command(x86_64_twin), cwd=x86_64_twin) as (url, process):
        yield url
        assert "Traceback" not in process.output, process.output


def streamed_turn(invoke_url: str, body: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """POST one Function URL event with `body`; the prelude and the SSE events it streamed.

    A stored-conversation turn (once conversations exist) is one more call with its body.
    """
    response = httpx.post(invoke_url, json=function_url_event(body), timeout=30)
    assert response.status_code == 200, response.text
    prelude, stream = split_streamed(response.content)
    return prelude, decode_sse(stream)


def test_the_built_package_streams_a_function_url_answer(packaged_url: str, fake: FakeOpenAI) -> None:
    message = fake.script(unique(), deltas("from", " the", " package"))
    prelude, events = streamed_turn(packaged_url, {"message": message})
    assert prelude["statusCode"] == 200
    assert prelude["headers"]["content-type"] == "text/event-stream; charset=utf-8"
    assert events == [("message", "from"), ("message", " the"), ("message", " package"), ("message", "[DONE]")]
