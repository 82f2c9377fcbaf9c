"""Conversations shared by separate app processes: SQLite on one file, DynamoDB on moto's server.

Each app is its own uvicorn process configured by environment variables, as deployed.
moto's server stands in for DynamoDB (AWS itself cannot run here); its table is created
from template.yaml's definition.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.conversation import STOPPED
from tests.harness import dynamodb
from tests.harness.app_process import AppProcess, app_env
from tests.harness.fake_openai import Delta, FakeOpenAI, Stall, deltas
from tests.harness.support import post_stream, unique


def env_for(fake: FakeOpenAI, store: dict[str, str], **extra: str) -> dict[str, str]:
    return app_env(fake.base_url, CHAT_STOP_POLL_SECONDS="0.25", **store, **extra)


@pytest.fixture(params=["sqlite", "dynamodb"])
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment pointing two processes at the same store."""
    if request.param == "sqlite":
        yield {"CHAT_STORE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}"}
        return
    table = unique("chat")  # moto's server keeps its tables for the life of the test process
    with dynamodb.moto_server() as endpoint:
        dynamodb.create_table(dynamodb.client(endpoint), table)
        yield dynamodb.server_env(endpoint, table)


def messages(url: str, conversation_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{url}/api/conversations/{conversation_id}", timeout=10)
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["messages"]
    return found


def test_a_conversation_continues_in_another_process_and_stops_from_a_third(
    fake: FakeOpenAI, shared_store: dict[str, str]
) -> None:
    env = env_for(fake, shared_store)
    with AppProcess(env) as first, AppProcess(env) as second:
        opening = fake.script(unique("open"), deltas("Hi"))
        started = post_stream(first.url, {"message": opening, "store": True})
        conversation_id = started.headers["x-conversation-id"]
        follow_up = fake.script(unique("follow"), deltas("Again"))
        assert post_stream(second.url, {"message": follow_up, "conversation_id": conversation_id}).status == 200
        [upstream] = fake.requests_for(follow_up)
        sent: Any = upstream.json["messages"]
        assert [m["content"] for m in sent] == [opening, "Hi", follow_up]

        # Stop: the answer streams from the first process, the stop goes to the second.
        endless = fake.script(unique("endless"), [Delta("part"), Stall()])
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", f"{first.url}/api/chat/stream", json={"message": endless, "conversation_id": conversation_id}
            ) as response,
        ):
            chunks = response.iter_raw()
            seen = b""
            while b"\n\n" not in seen:
                seen += next(chunks)
            asked = time.monotonic()
            assert httpx.post(f"{second.url}/api/conversations/{conversation_id}/stop", timeout=10).status_code == 202
            rest = b"".join(chunks)
            took = time.monotonic() - asked
        assert took < 2.0
        assert rest.endswith(f"event:error\ndata:{STOPPED}\n\n".encode())
        [closed] = fake.requests_for(endless)
        assert closed.closed_event.wait(2)
        assert [(m["content"], m["status"]) for m in messages(second.url, conversation_id)][-2:] == [
            (endless, "complete"),
            ("part", "stopped"),
        ]


def test_a_killed_process_keeps_the_user_turn_and_the_lock_expires(
    fake: FakeOpenAI, shared_store: dict[str, str]
) -> None:
    lock_seconds = 4  # long enough that the busy check below runs before expiry on a loaded machine
    env = env_for(fake, shared_store, CHAT_ANSWER_LOCK_SECONDS=str(lock_seconds))
    with AppProcess(env) as survivor:
        conversation_id = post_stream(survivor.url, {"message": unique(), "store": True}).headers["x-conversation-id"]
        doomed_message = fake.script(unique("doomed"), [Delta("never stored"), Stall()])
        with AppProcess(env) as doomed:
            client = httpx.Client(timeout=30)
            request = client.build_request(
                "POST",
                f"{doomed.url}/api/chat/stream",
                json={"message": doomed_message, "conversation_id": conversation_id},
            )
            response = client.send(request, stream=True)
            chunks = response.iter_raw()
            assert b"never stored" in next(chunks)
            # The lock was taken before this first chunk; DynamoDB keeps its expiry in whole seconds, rounded up.
            lock_gone_at = time.monotonic() + lock_seconds + 1
            os.kill(doomed.pid, signal.SIGKILL)  # no cleanup runs, as when an instance crashes
            doomed.wait(10)
            response.close()
            client.close()
        assert [m["content"] for m in messages(survivor.url, conversation_id)][-1] == doomed_message
        busy = post_stream(survivor.url, {"message": unique(), "conversation_id": conversation_id})
        assert busy.status == 409
        assert json.loads(busy.raw)["error"] == "An answer is already in progress in this conversation."
        time.sleep(max(0.0, lock_gone_at - time.monotonic()) + 0.25)
        after = fake.script(unique("after"), deltas("back"))
        assert post_stream(survivor.url, {"message": after, "conversation_id": conversation_id}).status == 200
        assert [m["content"] for m in messages(survivor.url, conversation_id)][-3:] == [doomed_message, after, "back"]
