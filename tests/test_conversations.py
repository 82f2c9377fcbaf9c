"""Stored conversations through the real app over HTTP: the API, the relay's writes, stop, identity.

The app runs under uvicorn on 127.0.0.1 against the fake model, with SQLite on a temp
file or DynamoDB through moto in process (AWS itself cannot run here; the table comes
from template.yaml). A caller's IAM identity is what Lambda's Function URL verified:
here a small wrapper puts it where mangum puts the Function URL event
(`scope["aws.event"]`), standing in for AWS's own check.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from moto import mock_aws

from chat.app import create_app
from chat.conversation import STOPPED
from tests.harness import dynamodb
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Raw, Reset, Sleep, Stall, deltas, openai_error
from tests.harness.support import AppServer, post_stream, settings_for, unique

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
PRINCIPAL_HEADER = "x-test-principal"


class AsCaller:
    """Stands in for Lambda's Function URL auth: the verified principal goes where mangum puts the event."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            principal = dict(scope["headers"]).get(PRINCIPAL_HEADER.encode())
            if principal:
                arn = principal.decode()
                scope = {**scope, "aws.event": {"requestContext": {"authorizer": {"iam": {"userArn": arn}}}}}
        await self.app(scope, receive, send)


class Service:
    def __init__(self, server: AppServer, fake: FakeOpenAI) -> None:
        self.server = server
        self.fake = fake
        self.url = server.url

    def ask(self, body: dict[str, Any], caller: str = ALICE) -> Any:
        return post_stream(self.url, body, headers={PRINCIPAL_HEADER: caller})

    def ask_in_background(self, message: str, conversation_id: str) -> tuple[threading.Thread, list[Any]]:
        """Start asking in a thread and return once the model has the request: the answer is then in progress."""
        results: list[Any] = []
        body = {"message": message, "conversation_id": conversation_id}
        thread = threading.Thread(target=lambda: results.append(self.ask(body)))
        thread.start()
        deadline = time.monotonic() + 5
        while not self.fake.requests_for(message) and time.monotonic() < deadline:
            time.sleep(0.01)
        return thread, results

    def call(self, method: str, path: str, caller: str = ALICE, **kwargs: Any) -> httpx.Response:
        with httpx.Client(timeout=30) as client:
            return client.request(method, f"{self.url}{path}", headers={PRINCIPAL_HEADER: caller}, **kwargs)

    def conversation(self, conversation_id: str, caller: str = ALICE) -> dict[str, Any]:
        response = self.call("GET", f"/api/conversations/{conversation_id}", caller)
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()
        return data


def _serve(fake: FakeOpenAI, **overrides: Any) -> Iterator[Service]:
    app = create_app(settings_for(fake, **overrides))
    with AppServer(app=AsCaller(app)) as server:  # type: ignore[arg-type]
        yield Service(server, fake)
    app.state.store.close()


@pytest.fixture
def service(fake: FakeOpenAI, store_url: str) -> Iterator[Service]:
    yield from _serve(fake, store_url=store_url, stop_poll_seconds=0.1)


@pytest.fixture
def sqlite_service(fake: FakeOpenAI, tmp_path: Path) -> Iterator[Service]:
    yield from _serve(fake, store_url=f"sqlite:///{tmp_path / 'chat.sqlite3'}", stop_poll_seconds=0.1)


def answer_text(events: list[tuple[str, str]]) -> str:
    return "".join(data for kind, data in events if kind == "message" and data != "[DONE]")


def test_a_stored_conversation_keeps_its_context(service: Service, fake: FakeOpenAI) -> None:
    first = fake.script(unique("first"), deltas("Hello", " there"))
    started = service.ask({"message": first, "store": True})
    assert started.status == 200
    conversation_id = started.headers["x-conversation-id"]
    assert started.events[-1] == ("message", "[DONE]")

    second = fake.script(unique("second"), deltas("Sure"))
    continued = service.ask({"message": second, "conversation_id": conversation_id})
    assert continued.status == 200
    assert continued.headers["x-conversation-id"] == conversation_id
    [upstream] = fake.requests_for(second)
    assert upstream.json["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": second},
    ]

    stored = service.conversation(conversation_id)
    assert stored["id"] == conversation_id
    assert stored["title"] == first
    assert [(m["role"], m["content"], m["status"]) for m in stored["messages"]] == [
        ("user", first, "complete"),
        ("assistant", "Hello there", "complete"),
        ("user", second, "complete"),
        ("assistant", "Sure", "complete"),
    ]
    assert all(m["created_at"].endswith("Z") for m in stored["messages"])
    listed = service.call("GET", "/api/conversations").json()
    assert listed["conversations"][0] == {key: stored[key] for key in ("id", "title", "created_at", "updated_at")}
    assert listed["next_cursor"] is None


def test_a_stored_answer_is_byte_for_byte_the_stateless_one(service: Service, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), deltas("a\nb", " c", "[DONE]", "\r"))
    stateless = service.ask({"message": key})
    stored = service.ask({"message": key, "store": True})
    assert stored.raw == stateless.raw
    assert "x-conversation-id" not in stateless.headers
    assert stored.headers["content-type"] == stateless.headers["content-type"]


def test_the_next_turn_sent_the_moment_done_arrives_is_never_refused(service: Service, fake: FakeOpenAI) -> None:
    conversation_id = service.ask({"message": unique(), "store": True}).headers["x-conversation-id"]
    for _ in range(5):
        result = service.ask({"message": fake.script(unique(), deltas("ok")), "conversation_id": conversation_id})
        assert result.status == 200, result.raw
        assert result.events[-1] == ("message", "[DONE]")
    assert len(service.conversation(conversation_id)["messages"]) == 12


def test_a_lone_surrogate_from_the_model_is_stored_as_the_replacement_character(
    service: Service, fake: FakeOpenAI
) -> None:
    """Half a UTF-16 pair escaped in the model's JSON cannot be UTF-8: the answer is stored as streamed."""
    half = b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud83db"}}]}\n\n'
    message = fake.script(unique(), [Raw(half), *deltas("ok")])
    result = service.ask({"message": message, "store": True})
    assert result.events == [("message", "a\ufffdb"), ("message", "ok"), ("message", "[DONE]")]
    stored = service.conversation(result.headers["x-conversation-id"])["messages"]
    assert [(m["content"], m["status"]) for m in stored] == [(message, "complete"), ("a\ufffdbok", "complete")]


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"store": True, "history": []}, 400, "history cannot be combined"),
        ({"conversation_id": "0" * 32, "history": [{"role": "user", "content": "x"}]}, 400, "history cannot"),
        ({"store": True, "conversation_id": "0" * 32}, 400, "not both"),
        ({"store": "yes"}, 400, "store must be true or false"),
        ({"conversation_id": 7}, 400, "conversation_id must be a string"),
        ({"conversation_id": "0" * 32}, 404, "Conversation not found."),
        ({"conversation_id": "not-an-id"}, 404, "Conversation not found."),
    ],
)
def test_conversation_fields_are_checked(
    sqlite_service: Service, body: dict[str, Any], status: int, error: str
) -> None:
    result = sqlite_service.ask({"message": "hi", **body})
    assert result.status == status
    assert error in json.loads(result.raw)["error"]


def test_another_caller_gets_404_on_every_route(service: Service, fake: FakeOpenAI) -> None:
    conversation_id = service.ask({"message": unique(), "store": True}).headers["x-conversation-id"]
    path = f"/api/conversations/{conversation_id}"
    for method, route in [("GET", path), ("DELETE", path), ("POST", f"{path}/stop")]:
        response = service.call(method, route, BOB)
        assert (response.status_code, response.json()) == (404, {"error": "Conversation not found."}), route
    refused = service.ask({"message": unique(), "conversation_id": conversation_id}, BOB)
    assert (refused.status, json.loads(refused.raw)) == (404, {"error": "Conversation not found."})
    assert service.call("GET", "/api/conversations", BOB).json() == {"conversations": [], "next_cursor": None}
    assert len(service.conversation(conversation_id)["messages"]) == 2  # untouched


def test_concurrent_streams_on_one_conversation_get_one_200_and_one_409(service: Service, fake: FakeOpenAI) -> None:
    conversation_id = service.ask({"message": unique(), "store": True}).headers["x-conversation-id"]
    slow = fake.script(unique("slow"), [Delta("slow"), Sleep(0.6), Delta(" answer"), Done()])
    first, results = service.ask_in_background(slow, conversation_id)
    second_key = fake.script(unique("second"), deltas("never"))
    second = service.ask({"message": second_key, "conversation_id": conversation_id})
    first.join(10)
    assert results[0].status == 200
    assert second.status == 409
    assert json.loads(second.raw) == {"error": "An answer is already in progress in this conversation."}
    assert second.headers["x-conversation-id"] == conversation_id
    # The refused turn's model request may have opened meanwhile (the lock is written while it opens);
    # it was dropped: nothing of it reached the client or the store.
    contents = [m["content"] for m in service.conversation(conversation_id)["messages"]]
    assert contents[-2:] == [slow, "slow answer"]
    assert second_key not in contents


def stream_until_first_event(service: Service, body: dict[str, Any]) -> tuple[httpx.Client, Any, str, Any]:
    """Open a stream and read up to its first event; returns the client, response, id and the chunk iterator
    (keep it: a dropped iterator closes the response)."""
    client = httpx.Client(timeout=30)
    request = client.build_request(
        "POST", f"{service.url}/api/chat/stream", json=body, headers={PRINCIPAL_HEADER: ALICE}
    )
    response = client.send(request, stream=True)
    assert response.status_code == 200
    chunks = response.iter_raw()
    seen = b""
    while b"\n\n" not in seen:
        seen += next(chunks)
    return client, response, response.headers["x-conversation-id"], chunks


def test_stop_from_another_connection_ends_the_stream_within_2_s(service: Service, fake: FakeOpenAI) -> None:
    key = fake.script(unique("endless"), [Delta("partial"), Stall()])
    client, response, conversation_id, chunks = stream_until_first_event(service, {"message": key, "store": True})
    try:
        asked = time.monotonic()
        stop = service.call("POST", f"/api/conversations/{conversation_id}/stop")
        assert stop.status_code == 202
        rest = b"".join(chunks)
        ended = time.monotonic() - asked
    finally:
        response.close()
        client.close()
    assert ended < 2.0
    assert rest.endswith(f"event:error\ndata:{STOPPED}\n\n".encode())
    [upstream] = fake.requests_for(key)
    assert upstream.closed_event.wait(2), "the model's request was not closed"
    answer = service.conversation(conversation_id)["messages"][-1]
    assert (answer["content"], answer["status"]) == ("partial", "stopped")
    assert service.call("POST", f"/api/conversations/{conversation_id}/stop").status_code == 204
    assert service.ask({"message": unique(), "conversation_id": conversation_id}).status == 200


def test_a_stop_before_the_model_answers_ends_the_stream_too(sqlite_service: Service, fake: FakeOpenAI) -> None:
    from tests.harness.fake_openai import HeaderDelay

    service = sqlite_service
    conversation_id = service.ask({"message": unique(), "store": True}).headers["x-conversation-id"]
    key = fake.script(unique("thinking"), [HeaderDelay(20), *deltas("late")])
    thread, results = service.ask_in_background(key, conversation_id)
    assert service.call("POST", f"/api/conversations/{conversation_id}/stop").status_code == 202
    thread.join(3)
    assert not thread.is_alive()
    assert results[0].status == 200
    assert results[0].events == [("error", STOPPED)]
    assert service.conversation(conversation_id)["messages"][-1]["status"] == "stopped"


def test_a_client_that_leaves_mid_answer_leaves_its_partial_answer_stored(service: Service, fake: FakeOpenAI) -> None:
    key = fake.script(unique("leave"), [Delta("so far"), Stall()])
    client, response, conversation_id, _ = stream_until_first_event(service, {"message": key, "store": True})
    response.close()
    client.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = service.conversation(conversation_id)["messages"]
        if len(messages) == 2:
            break
        time.sleep(0.05)
    assert [(m["content"], m["status"]) for m in messages] == [(key, "complete"), ("so far", "disconnected")]


@pytest.mark.parametrize(
    ("steps", "status"),
    [
        ([Delta("half"), Reset()], "error"),
        ([Delta("half"), Sleep(3)], "timeout"),
    ],
)
def test_an_upstream_failure_mid_stream_stores_the_partial_answer(
    sqlite_service: Service, fake: FakeOpenAI, steps: list[Any], status: str
) -> None:
    result = sqlite_service.ask({"message": fake.script(unique(), steps), "store": True})
    assert result.events[-1][0] == "error"
    messages = sqlite_service.conversation(result.headers["x-conversation-id"])["messages"]
    assert (messages[-1]["content"], messages[-1]["status"]) == ("half", status)


def test_a_refused_model_request_keeps_the_user_turn_and_frees_the_conversation(
    sqlite_service: Service, fake: FakeOpenAI
) -> None:
    key = fake.script(unique(), [openai_error(400, "nope")])
    refused = sqlite_service.ask({"message": key, "store": True})
    assert refused.status == 502
    conversation_id = refused.headers["x-conversation-id"]
    messages = sqlite_service.conversation(conversation_id)["messages"]
    assert [(m["role"], m["content"], m["status"]) for m in messages] == [
        ("user", key, "complete"),
        ("assistant", "", "error"),
    ]
    key_again = fake.script(unique(), deltas("ok"))
    again = sqlite_service.ask({"message": key_again, "conversation_id": conversation_id})
    assert again.status == 200
    [upstream] = fake.requests_for(key_again)
    assert upstream.json["messages"] == [{"role": "user", "content": key}, {"role": "user", "content": key_again}]


def test_history_is_bounded_by_the_token_budget_newest_kept(fake: FakeOpenAI, tmp_path: Path) -> None:
    for service in _serve(fake, store_url=f"sqlite:///{tmp_path / 'c.sqlite3'}", history_token_budget=60):
        words = "word " * 40  # about 50 tokens with its framing
        conversation_id = service.ask({"message": "first " + words, "store": True}).headers["x-conversation-id"]
        key = fake.script(unique(), deltas("ok"))
        assert service.ask({"message": key, "conversation_id": conversation_id}).status == 200
        [upstream] = fake.requests_for(key)
        sent: Any = upstream.json["messages"]
        assert sent[-1] == {"role": "user", "content": key}
        assert all("first" not in m["content"] for m in sent)  # the oldest turn was dropped, not cut
        too_long = service.ask({"message": "x " * 400, "conversation_id": conversation_id})
        assert too_long.status == 400
        assert "CHAT_HISTORY_TOKEN_BUDGET" in json.loads(too_long.raw)["error"]


def test_delete_removes_the_conversation(service: Service, fake: FakeOpenAI) -> None:
    conversation_id = service.ask({"message": unique(), "store": True}).headers["x-conversation-id"]
    deleted = service.call("DELETE", f"/api/conversations/{conversation_id}")
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert service.call("GET", f"/api/conversations/{conversation_id}").status_code == 404
    assert service.call("DELETE", f"/api/conversations/{conversation_id}").status_code == 404
    assert conversation_id not in [c["id"] for c in service.call("GET", "/api/conversations").json()["conversations"]]
    gone = service.ask({"message": unique(), "conversation_id": conversation_id})
    assert gone.status == 404


def test_the_list_pages_newest_first(sqlite_service: Service) -> None:
    ids = [sqlite_service.ask({"message": f"topic {n}", "store": True}).headers["x-conversation-id"] for n in range(3)]
    seen, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = sqlite_service.call("GET", f"/api/conversations{query}").json()
        seen += [c["id"] for c in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]
    for query in ["?limit=0", "?limit=101", "?limit=x", "?cursor=bogus", "?limit=-1"]:
        response = sqlite_service.call("GET", f"/api/conversations{query}")
        assert response.status_code == 400, query
        assert set(response.json()) == {"error"}


HOSTILE_IDS = [
    "..",
    "../../etc/passwd",
    "%2e%2e%2f",
    "a" * 10240,
    "é" * 32,
    "💥",
    "0" * 31,
    "0" * 33,
    "%00",
    "' OR 1=1 --",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_ids_are_refused_cleanly(sqlite_service: Service, hostile: str) -> None:
    for method, path in [
        ("GET", f"/api/conversations/{hostile}"),
        ("DELETE", f"/api/conversations/{hostile}"),
        ("POST", f"/api/conversations/{hostile}/stop"),
    ]:
        response = sqlite_service.call(method, path)
        assert response.status_code in (400, 404), (method, path, response.status_code)
        assert set(response.json()) == {"error"}
    streamed = sqlite_service.ask({"message": "hi", "conversation_id": hostile})
    assert streamed.status in (400, 404)


def test_empty_ids_are_refused_cleanly(sqlite_service: Service) -> None:
    for method, path in [("GET", "/api/conversations/"), ("POST", "/api/conversations//stop")]:
        response = sqlite_service.call(method, path)
        assert response.status_code in (400, 404), (method, path, response.status_code)
    assert sqlite_service.ask({"message": "hi", "conversation_id": ""}).status == 404


def test_with_the_store_off_the_service_is_stateless(fake: FakeOpenAI) -> None:
    for service in _serve_without_store(fake):
        result = service.ask({"message": unique(), "store": True})
        assert result.status == 200
        assert "x-conversation-id" not in result.headers
        assert service.call("GET", "/api/conversations").status_code == 404
        assert service.call("POST", f"/api/conversations/{'0' * 32}/stop").status_code == 404
        schema = service.call("GET", "/openapi.json").json()
        assert not [path for path in schema["paths"] if path.startswith("/api/conversations")]


def _serve_without_store(fake: FakeOpenAI) -> Iterator[Service]:
    app = create_app(settings_for(fake, store_url="none"))
    with AppServer(app=AsCaller(app)) as server:  # type: ignore[arg-type]
        yield Service(server, fake)


def test_openapi_documents_the_conversation_api(sqlite_service: Service) -> None:
    schema = sqlite_service.call("GET", "/openapi.json").json()
    paths = schema["paths"]
    assert set(paths["/api/conversations"]) == {"get"}
    assert set(paths["/api/conversations/{conversation_id}"]) == {"get", "delete"}
    assert set(paths["/api/conversations/{conversation_id}/stop"]) == {"post"}
    stream = paths["/api/chat/stream"]["post"]
    properties = stream["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"store", "conversation_id"} <= set(properties)
    assert "X-Conversation-Id" in stream["responses"]["200"]["headers"]
    assert {"404", "409"} <= set(stream["responses"])


def test_a_one_mib_answer_round_trips_through_dynamodb(fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in dynamodb.TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    piece = "Grüße 世界 🙂 " * 4000
    content = (piece * 40)[: 1024 * 1024]
    chunks = [content[i : i + 65536] for i in range(0, len(content), 65536)]
    with mock_aws():
        dynamodb.create_table(dynamodb.client(), "chat")
        for service in _serve(fake, store_url="dynamodb://chat"):
            result = service.ask({"message": fake.script(unique(), deltas(*chunks)), "store": True})
            assert result.status == 200
            stored = service.conversation(result.headers["x-conversation-id"])["messages"][-1]
            assert (stored["status"], len(stored["content"])) == ("complete", len(content))
            assert stored["content"] == content
