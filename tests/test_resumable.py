"""Resumable answers over real HTTP: cut a client mid-answer, reconnect with its last id, miss nothing.

The fake model paces its tokens; the app runs under uvicorn with SQLite on a temp file or
DynamoDB through moto in process (AWS itself cannot run here; the table comes from
template.yaml). "Another instance" is a second app on the same store: it has none of the
producer's memory, so its followers read the store, as on another Lambda instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.app import create_app
from chat.conversation import STOPPED, ConversationTurn
from chat.resumable import ERROR, MESSAGE, VANISHED, LiveAnswer, _from_memory
from chat.store.base import AnswerEvents, EventBatch, Store, StoreUnavailable
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Reset, Sleep, Stall, Step
from tests.harness.support import AppServer, settings_for, unique
from tests.test_conversations import ALICE, BOB, PRINCIPAL_HEADER, AsCaller

Event = tuple[str | None, str, str]  # (id, event, data)
# A held answer must outlast a slow machine: only a stop (or the test's end) ends it.
RESUME = {"resume_batch_seconds": 0.05, "resume_poll_seconds": 0.05, "stop_poll_seconds": 0.1, "idle_timeout": 20.0}


def parse(raw: bytes) -> list[Event]:
    """Standard SSE decoding (httpx-sse), keeping each event's id."""
    from httpx_sse import EventSource

    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [(event.id or None, event.event, event.data) for event in EventSource(response).iter_sse()]


class Instance:
    """One app (one process's worth of memory) serving the shared store."""

    def __init__(self, server: AppServer) -> None:
        self.url = server.url

    def open(self, method: str, path: str, caller: str = ALICE, **kwargs: Any) -> tuple[httpx.Client, httpx.Response]:
        client = httpx.Client(timeout=30)
        headers = {PRINCIPAL_HEADER: caller, **kwargs.pop("headers", {})}
        request = client.build_request(method, f"{self.url}{path}", headers=headers, **kwargs)
        response = client.send(request, stream=True)
        return client, response

    def call(self, method: str, path: str, caller: str = ALICE, **kwargs: Any) -> httpx.Response:
        client, response = self.open(method, path, caller, **kwargs)
        with contextlib.closing(client):
            response.read()
        return response

    def ask(self, body: dict[str, Any]) -> httpx.Response:
        return self.call("POST", "/api/chat/stream", json=body)

    def ask_and_cut(self, body: dict[str, Any], events: int) -> tuple[str, list[Event]]:
        """Stream until `events` events arrived, then drop the connection: the conversation id and what arrived."""
        client, response = self.open("POST", "/api/chat/stream", json=body)
        with contextlib.closing(client):
            assert response.status_code == 200, response.read()
            seen = b""
            chunks = response.iter_raw()
            while seen.count(b"\n\n") < events:
                seen += next(chunks)
            response.close()
        return response.headers["x-conversation-id"], parse(seen)[:events]

    def resume(self, conversation_id: str, last_id: str | None = None, caller: str = ALICE) -> httpx.Response:
        headers = {} if last_id is None else {"last-event-id": last_id}
        return self.call("GET", f"/api/conversations/{conversation_id}/stream", caller, headers=headers)


class Deployment:
    """Two instances on one store, and the fake model."""

    def __init__(self, first: Instance, second: Instance, fake: FakeOpenAI) -> None:
        self.first, self.second, self.fake = first, second, fake


def _deploy(fake: FakeOpenAI, store_url: str, **overrides: Any) -> Iterator[Deployment]:
    apps = [create_app(settings_for(fake, store_url=store_url, **{**RESUME, **overrides})) for _ in range(2)]
    with AppServer(app=AsCaller(apps[0])) as one, AppServer(app=AsCaller(apps[1])) as two:  # type: ignore[arg-type]
        yield Deployment(Instance(one), Instance(two), fake)
    for app in apps:
        app.state.store.close()


@pytest.fixture
def deployment(fake: FakeOpenAI, store_url: str) -> Iterator[Deployment]:
    yield from _deploy(fake, store_url)


deployed = contextlib.contextmanager(_deploy)  # for a test that needs its own settings


def paced(words: list[str], pause: float = 0.03) -> list[Step]:
    steps: list[Step] = []
    for word in words:
        steps += [Delta(word), Sleep(pause)]
    return [*steps, Done()]


WORDS = ["Once", " upon", " a", " time", "\n", " there", " was", " a", " stream", " that", " broke", "."]
EXPECTED = [*[("message", word) for word in WORDS], ("message", "[DONE]")]


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    return [(event, data) for _, event, data in events]


def wait_for_answer(instance: Instance, conversation_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        messages = instance.call("GET", f"/api/conversations/{conversation_id}").json()["messages"]
        if len(messages) % 2 == 0 or time.monotonic() > deadline:
            return dict(messages[-1])
        time.sleep(0.05)


def test_the_ids_are_the_only_difference_from_a_stored_answer(deployment: Deployment) -> None:
    key = deployment.fake.script(unique(), paced(WORDS, 0))
    plain = deployment.first.ask({"message": key, "store": True})
    resumable = deployment.first.ask({"message": key, "store": True, "resumable": True})
    events = parse(resumable.content)
    assert kinds(events) == EXPECTED
    ids = [event_id for event_id, _, _ in events]
    assert all(ids)
    assert len(set(ids)) == len(ids)
    without_ids = b"".join(line + b"\n" for line in resumable.content.split(b"\n")[:-1] if not line.startswith(b"id:"))
    assert without_ids == plain.content


@pytest.mark.parametrize("where", ["same instance", "another instance"])
def test_a_cut_answer_resumed_with_its_last_id_is_the_whole_answer(deployment: Deployment, where: str) -> None:
    key = deployment.fake.script(unique(), paced(WORDS))
    conversation_id, before = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 3)
    resumer = deployment.first if where == "same instance" else deployment.second
    rest = resumer.resume(conversation_id, before[-1][0])
    assert rest.status_code == 200
    assert rest.headers["x-conversation-id"] == conversation_id
    assert kinds(before) + kinds(parse(rest.content)) == EXPECTED
    stored = wait_for_answer(deployment.first, conversation_id)
    assert (stored["content"], stored["status"]) == ("".join(WORDS), "complete")


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=1, max_value=len(WORDS)), other=st.booleans())
def test_any_cut_point_loses_and_doubles_nothing(sqlite_deployment: Deployment, cut: int, other: bool) -> None:
    key = sqlite_deployment.fake.script(unique(), paced(WORDS, 0.01))
    body = {"message": key, "store": True, "resumable": True}
    conversation_id, before = sqlite_deployment.first.ask_and_cut(body, cut)
    resumer = sqlite_deployment.second if other else sqlite_deployment.first
    rest = parse(resumer.resume(conversation_id, before[-1][0]).content)
    assert kinds(before) + kinds(rest) == EXPECTED
    assert [event_id for event_id, _, _ in before + rest] == [
        event_id for event_id, _, _ in parse(resumer.resume(conversation_id).content)
    ]


@pytest.fixture
def sqlite_deployment(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deploy(fake, f"sqlite:///{tmp_path_factory.mktemp('resume') / 'chat.sqlite3'}")


def test_after_the_answer_finished_a_resume_replays_the_rest_and_done(deployment: Deployment) -> None:
    key = deployment.fake.script(unique(), paced(WORDS))
    conversation_id, before = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 2)
    assert wait_for_answer(deployment.first, conversation_id)["status"] == "complete"  # ran on without its client
    for instance in (deployment.first, deployment.second):
        rest = parse(instance.resume(conversation_id, before[-1][0]).content)
        assert kinds(before) + kinds(rest) == EXPECTED
        assert kinds(parse(instance.resume(conversation_id).content)) == EXPECTED  # no id: from the start
        # A client that had everything (EventSource reconnects after a normal close) is told so at once.
        assert instance.resume(conversation_id, rest[-1][0]).status_code == 204
        seq, index = str(rest[-1][0]).split("-")
        assert instance.resume(conversation_id, f"{seq}-{int(index) + 1}").status_code == 400


def test_three_followers_get_the_identical_sequence(deployment: Deployment) -> None:
    key = deployment.fake.script(unique(), paced(WORDS, 0.05))
    conversation_id, _ = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
    results: list[bytes] = []
    followers = [
        threading.Thread(target=lambda i=i: results.append(i.resume(conversation_id).content))
        for i in (deployment.first, deployment.second, deployment.second)
    ]
    for follower in followers:
        follower.start()
    for follower in followers:
        follower.join(20)
    assert len(results) == 3
    assert results[0] == results[1] == results[2]
    assert kinds(parse(results[0])) == EXPECTED


def test_an_upstream_failure_after_the_cut_reaches_the_resumed_client(deployment: Deployment) -> None:
    key = deployment.fake.script(unique(), [Delta("half"), Sleep(0.3), Delta(" more"), Reset()])
    conversation_id, before = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
    rest = parse(deployment.second.resume(conversation_id, before[-1][0]).content)
    assert kinds(rest)[0] == ("message", " more")
    assert [event for _, event, _ in rest[1:]] == ["error"]
    assert wait_for_answer(deployment.first, conversation_id)["status"] == "error"


def test_stop_ends_the_answer_and_every_follower(deployment: Deployment) -> None:
    key = deployment.fake.script(unique("endless"), [Delta("partial"), Stall()])
    conversation_id, _ = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
    ends: list[tuple[float, list[Event]]] = []

    def follow(instance: Instance) -> None:
        client, response = instance.open("GET", f"/api/conversations/{conversation_id}/stream")
        with contextlib.closing(client):
            seen = b""
            for chunk in response.iter_raw():
                seen += chunk
            ends.append((time.monotonic(), parse(seen)))

    followers = [threading.Thread(target=follow, args=(i,)) for i in (deployment.first, deployment.second)]
    for follower in followers:
        follower.start()
    time.sleep(0.5)
    assert not ends, "followers ended before the stop"
    asked = time.monotonic()
    assert deployment.second.call("POST", f"/api/conversations/{conversation_id}/stop").status_code == 202
    for follower in followers:
        follower.join(5)
    assert len(ends) == 2
    for ended, events in ends:
        assert ended - asked < 2.0
        assert kinds(events) == [("message", "partial"), ("error", STOPPED)]
    [upstream] = deployment.fake.requests_for(key)
    assert upstream.closed_event.wait(2)
    assert wait_for_answer(deployment.first, conversation_id)["status"] == "stopped"


def test_resume_answers_204_404_400_and_429_clearly(deployment: Deployment) -> None:
    first, second = deployment.first, deployment.second
    plain = first.ask({"message": deployment.fake.script(unique(), paced(["ok"], 0)), "store": True})
    conversation_id = plain.headers["x-conversation-id"]
    assert first.resume(conversation_id).status_code == 204  # stored, but not resumable
    assert first.resume("0" * 32).status_code == 404
    assert first.resume("../etc").status_code == 404
    assert first.resume(conversation_id, "not-an-id").json() == {
        "error": "Last-Event-ID is not an event id this service sent."
    }
    stateless = first.ask({"message": "hi", "resumable": True})
    assert stateless.status_code == 400
    assert "resumable" in stateless.json()["error"]
    assert first.ask({"message": "hi", "store": True, "resumable": "yes"}).status_code == 400

    key = deployment.fake.script(unique(), [Delta("held"), Stall()])
    cid, _ = first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
    assert second.resume(cid, caller=BOB).status_code == 404  # someone else's: like unknown
    # The limit is counted in the store: followers on both instances share it.
    opened = [instance.open("GET", f"/api/conversations/{cid}/stream") for instance in [first] * 3 + [second] * 2]
    try:
        assert all(response.status_code == 200 for _, response in opened)
        for instance in (first, second):
            refused = instance.resume(cid)
            assert refused.status_code == 429
            assert "CHAT_RESUME_MAX_FOLLOWERS" in refused.json()["error"]
        via_query = first.call("GET", f"/api/conversations/{cid}/stream?last_event_id=zz")
        assert via_query.status_code == 400
        client, response = opened.pop()
        response.close()
        client.close()
        deadline = time.monotonic() + 5  # the closed follower's slot is released when its server sees it go
        while (again := second.open("GET", f"/api/conversations/{cid}/stream"))[1].status_code != 200:
            again[0].close()
            assert time.monotonic() < deadline, "a closed follower's slot was never released"
            time.sleep(0.1)
        opened.append(again)
    finally:
        for client, response in opened:
            response.close()
            client.close()
        first.call("POST", f"/api/conversations/{cid}/stop")


def test_openapi_documents_resuming(sqlite_deployment: Deployment) -> None:
    schema = sqlite_deployment.first.call("GET", "/openapi.json").json()
    route = schema["paths"]["/api/conversations/{conversation_id}/stream"]["get"]
    assert {"200", "204", "404", "429"} <= set(route["responses"])
    assert {parameter["name"] for parameter in route["parameters"]} >= {"Last-Event-ID", "last_event_id"}
    body = schema["paths"]["/api/chat/stream"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "resumable" in body["properties"]


@pytest.mark.parametrize("where", ["same instance", "another instance"])
def test_a_follower_of_a_silent_answer_sends_keep_alives_at_the_heartbeat_rate(
    fake: FakeOpenAI, store_url: str, where: str
) -> None:
    heartbeat, watched = 0.3, 2.0
    with deployed(fake, store_url, heartbeat_seconds=heartbeat) as deployment:
        key = fake.script(unique("endless"), [Delta("held"), Stall()])
        conversation_id, _ = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
        instance = deployment.first if where == "same instance" else deployment.second
        client, response = instance.open("GET", f"/api/conversations/{conversation_id}/stream")
        seen = b""
        with contextlib.closing(client):
            until = time.monotonic() + watched
            for chunk in response.iter_raw():
                seen += chunk
                if time.monotonic() > until:
                    break
            response.close()
        deployment.first.call("POST", f"/api/conversations/{conversation_id}/stop")
        assert kinds(parse(seen))[:1] == [("message", "held")]
        assert 1 <= seen.count(b": keep-alive") <= watched / heartbeat + 2


def test_a_batch_stored_but_reported_failed_loses_nothing_for_another_instance(
    fake: FakeOpenAI, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected failure: the answer's first batch is stored, then the store reports an error (as a DynamoDB
    timeout after the write committed would), once a follower on another instance has read that batch."""
    write, read = Store.write_events, Store.read_events
    reads = {"since the failure": -1}

    async def stored_then_failed(self: Store, batch: EventBatch) -> None:
        await write(self, batch)
        if batch.events and batch.first == 0 and reads["since the failure"] < 0:
            reads["since the failure"] = 0
            until = time.monotonic() + 5
            while reads["since the failure"] < 1 and time.monotonic() < until:
                await asyncio.sleep(0.01)
            raise StoreUnavailable("simulated: the batch was stored, but the store reported a failure")

    async def counted(self: Store, *args: Any, **kwargs: Any) -> AnswerEvents | None:
        after = reads["since the failure"] >= 0
        found = await read(self, *args, **kwargs)
        reads["since the failure"] += after
        return found

    monkeypatch.setattr(Store, "write_events", stored_then_failed)
    monkeypatch.setattr(Store, "read_events", counted)
    words = [f" w{i}" for i in range(15)]
    with deployed(fake, store_url, first_token_timeout=2.0, idle_timeout=2.0) as deployment:
        key = fake.script(unique(), paced(words, 0.1))
        conversation_id, before = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
        rest = parse(deployment.second.resume(conversation_id, before[-1][0]).content)
        assert reads["since the failure"] >= 1, "the injected failure did not happen"
        assert kinds(before) + kinds(rest) == [*[("message", word) for word in words], ("message", "[DONE]")]


def test_followers_end_when_the_producer_fails_before_its_end(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected failure: storing the finished answer raises something unexpected, so the producer's
    normal ending never runs. Followers on either instance, and one arriving later, still end."""

    async def broken(*_: object, **__: object) -> bool:
        raise RuntimeError("simulated: the producer failed while storing its answer")

    monkeypatch.setattr(ConversationTurn, "finish", broken)
    key = deployment.fake.script(unique(), paced(["a", "b", "c"], 0.3))
    conversation_id, before = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
    path, last = f"/api/conversations/{conversation_id}/stream", {"last-event-id": str(before[-1][0])}
    # Well within the store follower's silence limit (RESUME's idle timeout): the end must be the producer's.
    for instance in (deployment.first, deployment.second, deployment.first):  # the last: after the producer died
        rest = parse(instance.call("GET", path, headers=last, timeout=10).content)
        assert kinds(rest) == [("message", "b"), ("message", "c"), ("error", VANISHED)]


def test_a_follower_in_the_producers_process_gives_up_on_a_silent_answer() -> None:
    """An answer in memory that nobody adds to (its producer vanished without ending it) ends its
    followers with an error after the silence limit, as the store's followers do."""
    live = LiveAnswer(1, [(MESSAGE, "a")])

    async def follow() -> list[tuple[int, tuple[str, str]]]:
        async with asyncio.timeout(10):
            return [item async for item in _from_memory(live, 0, 0.2)]

    assert asyncio.run(follow()) == [(0, (MESSAGE, "a")), (-1, (ERROR, VANISHED))]


def test_a_follower_that_fails_gives_its_slot_back(
    fake: FakeOpenAI, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected failure: a follower reading the store hits an unexpected error (a bug, not a store failure)."""
    read = Store.read_events
    failed = threading.Event()

    async def broken_poll(self: Store, *args: Any, check: bool, **kwargs: Any) -> AnswerEvents | None:
        if not check:  # the follower's polls; finding the answer still works
            failed.set()
            raise RuntimeError("simulated: a follower's read failed unexpectedly")
        return await read(self, *args, check=check, **kwargs)

    monkeypatch.setattr(Store, "read_events", broken_poll)
    with deployed(fake, store_url, resume_max_followers=1) as deployment:
        key = fake.script(unique("endless"), [Delta("held"), Stall()])
        conversation_id, _ = deployment.first.ask_and_cut({"message": key, "store": True, "resumable": True}, 1)
        try:
            with pytest.raises(httpx.RemoteProtocolError):  # the failed follower's stream breaks off
                deployment.second.resume(conversation_id)
            assert failed.is_set()
            follower = deployment.first.open("GET", f"/api/conversations/{conversation_id}/stream")
            with contextlib.closing(follower[0]):
                assert follower[1].status_code == 200  # the only slot is free again
        finally:
            deployment.first.call("POST", f"/api/conversations/{conversation_id}/stop")
