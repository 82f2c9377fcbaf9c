"""The store's behaviour, one suite run against both backends: SQLite on a temp file, and
DynamoDB through moto in process (AWS itself cannot run here; the table comes from template.yaml).

Times are passed in (`now`), so lock expiry and retention are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from chat import conversation
from chat.chat_request import ChatRequest
from chat.config import Settings
from chat.store import open_store
from chat.store.base import (
    BadCursor,
    ConversationNotFound,
    Store,
    StoreBusy,
    StoreUnavailable,
    TurnEnd,
    TurnStart,
    new_id,
)
from chat.store.sqlite import PURGE_INTERVAL_SECONDS
from tests.harness import dynamodb

T = TypeVar("T")
ALICE, BOB = "arn:aws:iam::123456789012:user/alice", "arn:aws:iam::123456789012:user/bob"
NOW = 1_800_000_000.0
DAY = 86400


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = open_store(store_url)
    assert opened is not None
    yield opened
    opened.close()


def start(
    conversation_id: str,
    seq: int,
    message: str = "hello",
    *,
    owner: str = ALICE,
    turn_id: str | None = None,
    now: float = NOW,
    lock_seconds: float = 300,
    new: bool = False,
) -> TurnStart:
    return TurnStart(
        owner=owner,
        conversation_id=conversation_id,
        seq=seq,
        turn_id=turn_id or new_id(),
        message=message,
        now=now,
        lock_until=now + lock_seconds,
        expires_at=int(now + 30 * DAY),
        title=message[:20] if new else None,
    )


def end(turn: TurnStart, content: str = "answer", status: str = "complete", **changes: Any) -> TurnEnd:
    values: dict[str, Any] = {
        "owner": turn.owner,
        "conversation_id": turn.conversation_id,
        "seq": turn.seq,
        "turn_id": turn.turn_id,
        "content": content,
        "status": status,
        "now": turn.now + 1,
        "expires_at": int(turn.now + 1 + 30 * DAY),
    }
    values.update(changes)
    return TurnEnd(**values)


def converse(store: Store, *pairs: tuple[str, str], owner: str = ALICE, now: float = NOW) -> str:
    """A conversation with these (question, answer) turns; returns its id."""
    conversation_id = new_id()
    for seq, (question, answer) in enumerate(pairs):
        turn = start(conversation_id, seq, question, owner=owner, now=now + 10 * seq, new=seq == 0)
        run(store.begin_turn(turn))
        run(store.finish_turn(end(turn, answer)))
    return conversation_id


def test_a_conversation_keeps_its_turns_in_order(store: Store) -> None:
    conversation_id = converse(store, ("What is 2+2?", "4"), ("And times 3?", "12"))
    loaded = run(store.load(ALICE, conversation_id, NOW + 100))
    assert loaded is not None
    assert [(m.role, m.content, m.status) for m in loaded.messages] == [
        ("user", "What is 2+2?", "complete"),
        ("assistant", "4", "complete"),
        ("user", "And times 3?", "complete"),
        ("assistant", "12", "complete"),
    ]
    assert loaded.next_seq == 2
    assert loaded.summary.title == "What is 2+2?"
    assert loaded.summary.created_at.startswith("2027-01-15T08:00:00.000000Z"[:19])
    assert loaded.summary.updated_at > loaded.summary.created_at
    assert all(m.created_at.endswith("Z") for m in loaded.messages)


def test_the_user_turn_is_stored_before_any_answer(store: Store) -> None:
    conversation_id = new_id()
    run(store.begin_turn(start(conversation_id, 0, "typed by the user", new=True)))
    loaded = run(store.load(ALICE, conversation_id, NOW + 1))
    assert loaded is not None
    assert [(m.role, m.content) for m in loaded.messages] == [("user", "typed by the user")]


def test_one_answer_at_a_time_until_the_lock_is_released_or_expires(store: Store) -> None:
    conversation_id = converse(store, ("q", "a"))
    first = start(conversation_id, 1, "second question", now=NOW + 100, lock_seconds=60)
    run(store.begin_turn(first))
    with pytest.raises(StoreBusy):
        run(store.begin_turn(start(conversation_id, 1, "concurrent", now=NOW + 101)))
    # A crashed writer's lock expires: the conversation is usable again, after the user turn it stored.
    later = start(conversation_id, 2, "after the crash", now=NOW + 200)
    run(store.begin_turn(later))
    run(store.finish_turn(end(later, "fine")))
    loaded = run(store.load(ALICE, conversation_id, NOW + 300))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["q", "a", "second question", "after the crash", "fine"]


def test_a_turn_written_from_a_stale_read_is_refused(store: Store) -> None:
    conversation_id = converse(store, ("q", "a"))
    with pytest.raises(StoreBusy):
        run(store.begin_turn(start(conversation_id, 0, "from a stale read", now=NOW + 50)))


def test_repeated_writes_of_a_turn_store_it_once(store: Store) -> None:
    conversation_id = new_id()
    turn = start(conversation_id, 0, "once", new=True)
    run(store.begin_turn(turn))
    run(store.begin_turn(turn))
    run(store.finish_turn(end(turn, "only once")))
    run(store.finish_turn(end(turn, "only once")))
    loaded = run(store.load(ALICE, conversation_id, NOW + 5))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["once", "only once"]
    page = run(store.list_conversations(ALICE, 10, None, NOW + 5))
    assert [c.id for c in page.conversations] == [conversation_id]


@pytest.mark.parametrize(("content", "status"), [("half an ans", "stopped"), ("", "error")])
def test_partial_and_empty_answers_keep_why_they_ended(store: Store, content: str, status: str) -> None:
    conversation_id = new_id()
    turn = start(conversation_id, 0, "tell me", new=True)
    run(store.begin_turn(turn))
    run(store.finish_turn(end(turn, content, status)))
    loaded = run(store.load(ALICE, conversation_id, NOW + 5))
    assert loaded is not None
    assert (loaded.messages[-1].content, loaded.messages[-1].status) == (content, status)


def test_stop_flags_the_answer_in_progress_only(store: Store) -> None:
    conversation_id = converse(store, ("q", "a"))
    assert run(store.request_stop(ALICE, conversation_id, NOW + 50)) == "idle"
    turn = start(conversation_id, 1, "long one", now=NOW + 60)
    run(store.begin_turn(turn))
    assert run(store.stop_requested(ALICE, conversation_id, turn.turn_id)) is False
    assert run(store.request_stop(BOB, conversation_id, NOW + 61)) == "missing"
    assert run(store.stop_requested(ALICE, conversation_id, turn.turn_id)) is False
    assert run(store.request_stop(ALICE, conversation_id, NOW + 61)) == "stopping"
    assert run(store.stop_requested(ALICE, conversation_id, turn.turn_id)) is True
    run(store.finish_turn(end(turn, "long", "stopped")))
    assert run(store.request_stop(ALICE, conversation_id, NOW + 70)) == "idle"


def test_another_caller_sees_nothing_and_changes_nothing(store: Store) -> None:
    conversation_id = converse(store, ("mine", "yes"))
    assert run(store.load(BOB, conversation_id, NOW + 50)) is None
    assert run(store.list_conversations(BOB, 10, None, NOW + 50)).conversations == ()
    with pytest.raises(ConversationNotFound):
        run(store.begin_turn(start(conversation_id, 1, "hijack", owner=BOB, now=NOW + 50)))
    assert run(store.delete(BOB, conversation_id, NOW + 50)) is False
    loaded = run(store.load(ALICE, conversation_id, NOW + 50))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["mine", "yes"]


def test_delete_removes_everything_and_an_answer_in_flight_does_not_bring_it_back(store: Store) -> None:
    conversation_id = converse(store, ("q", "a"))
    turn = start(conversation_id, 1, "in flight", now=NOW + 50)
    run(store.begin_turn(turn))
    assert run(store.delete(ALICE, conversation_id, NOW + 51)) is True
    assert run(store.stop_requested(ALICE, conversation_id, turn.turn_id)) is True  # its lock is gone: stop
    run(store.finish_turn(end(turn, "late answer")))
    assert run(store.load(ALICE, conversation_id, NOW + 60)) is None
    assert run(store.list_conversations(ALICE, 10, None, NOW + 60)).conversations == ()
    assert run(store.delete(ALICE, conversation_id, NOW + 61)) is False
    with pytest.raises(ConversationNotFound):
        run(store.begin_turn(start(conversation_id, 2, "again", now=NOW + 62)))


def test_listing_is_newest_first_and_pages_with_a_cursor(store: Store) -> None:
    ids = [converse(store, (f"conversation {n}", "ok"), now=NOW + n * 100) for n in range(5)]
    seen: list[str] = []
    cursor = None
    for _ in range(5):
        page = run(store.list_conversations(ALICE, 2, cursor, NOW + 1000))
        seen.extend(c.id for c in page.conversations)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    # Activity moves a conversation to the front.
    turn = start(ids[0], 1, "bump", now=NOW + 2000)
    run(store.begin_turn(turn))
    run(store.finish_turn(end(turn)))
    first = run(store.list_conversations(ALICE, 1, None, NOW + 2100)).conversations[0]
    assert (first.id, first.title) == (ids[0], "conversation 0")


@pytest.mark.parametrize("cursor", ["", "not base64!", "Zm9v", "A" * 500, "MjAyNi0xMS0zMFQwMDowMDowMC4wMDAwMDBaI3g"])
def test_a_cursor_the_service_did_not_issue_is_refused(store: Store, cursor: str) -> None:
    with pytest.raises(BadCursor):
        run(store.list_conversations(ALICE, 10, cursor, NOW))


def test_expired_conversations_are_invisible(store: Store) -> None:
    conversation_id = converse(store, ("old", "news"))
    after = NOW + 31 * DAY
    assert run(store.load(ALICE, conversation_id, after)) is None
    assert run(store.list_conversations(ALICE, 10, None, after)).conversations == ()
    assert run(store.request_stop(ALICE, conversation_id, after)) == "missing"
    with pytest.raises(ConversationNotFound):
        run(store.begin_turn(start(conversation_id, 1, "revive", now=after)))


def test_activity_moves_the_whole_conversations_expiry_forward(store: Store) -> None:
    conversation_id = converse(store, ("first", "turn"))
    later = NOW + 20 * DAY
    turn = start(conversation_id, 1, "still here", now=later)
    run(store.begin_turn(turn))
    run(store.finish_turn(end(turn, refresh_expiry=True)))
    loaded = run(store.load(ALICE, conversation_id, NOW + 45 * DAY))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["first", "turn", "still here", "answer"]
    assert loaded.oldest_expiry >= int(later + 1 + 30 * DAY)


def expire_as_the_backend_would(store_url: str, now: float) -> None:
    """DynamoDB's TTL deletes each item once its own `expires_at` has passed (moto has no TTL sweeper);
    SQLite purges whole conversations, which its next write does."""
    if store_url.startswith("dynamodb"):
        client = dynamodb.client()
        for item in client.scan(TableName="chat")["Items"]:
            if int(item["expires_at"]["N"]) <= now:
                client.delete_item(TableName="chat", Key={"pk": item["pk"], "sk": item["sk"]})


@pytest.mark.parametrize(("retention_days", "second_turn_day", "read_day"), [(30, 0.5, 30.2), (1, 0.5, 1.2)])
def test_a_live_conversation_keeps_every_turn_until_it_expires_as_a_whole(
    store: Store,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
    retention_days: float,
    second_turn_day: float,
    read_day: float,
) -> None:
    """Turns written at different times each carry an expiry on DynamoDB: none may go before the conversation."""
    settings = Settings(retention_days=retention_days)

    def turn_at(day: float, message: str, conversation_id: str | None) -> tuple[ChatRequest, str]:
        monkeypatch.setattr(conversation, "time", types.SimpleNamespace(time=lambda: NOW + day * DAY))
        chat = ChatRequest(message=message, store=conversation_id is None, conversation_id=conversation_id)

        async def write() -> tuple[ChatRequest, str]:
            request, turn = await conversation.start_turn(store, settings, ALICE, chat)
            await turn.begin(None)
            turn.add([f"answer to {message}"])
            assert await turn.finish("complete")
            return request, turn.conversation_id

        return run(write())

    _, conversation_id = turn_at(0, "first", None)
    turn_at(second_turn_day, "second", conversation_id)
    expire_as_the_backend_would(store_url, NOW + read_day * DAY)
    request, _ = turn_at(read_day, "third", conversation_id)
    assert [t.content for t in request.history] == ["first", "answer to first", "second", "answer to second"]


def test_a_long_answer_round_trips_whole(store: Store) -> None:
    """1 MiB with multi-byte characters: over DynamoDB's 400 KB item limit, so it is split and joined."""
    content = ("Grüße, 世界! 🙂 " * 70_000)[: 1024 * 1024]
    conversation_id = new_id()
    turn = start(conversation_id, 0, "write a lot", new=True)
    run(store.begin_turn(turn))
    run(store.finish_turn(end(turn, content)))
    loaded = run(store.load(ALICE, conversation_id, NOW + 5))
    assert loaded is not None
    assert loaded.messages[-1].content == content


def test_concurrent_turns_on_one_conversation_let_exactly_one_through(store: Store) -> None:
    conversation_id = converse(store, ("q", "a"))

    async def race() -> list[BaseException | None]:
        turns = [start(conversation_id, 1, f"racer {n}", now=NOW + 100) for n in range(6)]
        return await asyncio.gather(*(store.begin_turn(turn) for turn in turns), return_exceptions=True)

    results = run(race())
    assert sum(result is None for result in results) == 1, results
    assert all(isinstance(result, StoreBusy) for result in results if result is not None)


@pytest.mark.parametrize("store_url", ["dynamodb"], indirect=True)
def test_deleting_during_a_long_answer_leaves_none_of_it_stored(store: Store) -> None:
    """An answer over 350 kB is written in parts before the transaction that finds the conversation gone."""
    conversation_id = new_id()
    turn = start(conversation_id, 0, "write a lot", new=True)
    run(store.begin_turn(turn))
    assert run(store.delete(ALICE, conversation_id, NOW + 1)) is True
    run(store.finish_turn(end(turn, "x" * 1_000_000)))
    assert dynamodb.client().scan(TableName="chat")["Items"] == []


def cancelled(*codes: str) -> ClientError:
    """DynamoDB's TransactionCanceledException with these per-item reasons (moto never cancels for
    contention or throttling: AWS itself cannot run here, so the tests below inject it)."""
    response: Any = {
        "Error": {"Code": "TransactionCanceledException", "Message": "Transaction cancelled"},
        "CancellationReasons": [{"Code": code} for code in codes],
    }
    return ClientError(response, "TransactWriteItems")


def cancel_calls(store: Store, monkeypatch: pytest.MonkeyPatch, failing: dict[int, ClientError]) -> list[int]:
    """Make the store's TransactWriteItems calls numbered in `failing` (from 1) raise instead; returns the count."""
    client: Any = store.client()  # type: ignore[attr-defined]
    real = client.transact_write_items
    calls = [0]

    def transact(**request: Any) -> Any:
        calls[0] += 1
        if calls[0] in failing:
            raise failing[calls[0]]
        return real(**request)

    monkeypatch.setattr(client, "transact_write_items", transact)
    return calls


@pytest.mark.parametrize("store_url", ["dynamodb"], indirect=True)
@pytest.mark.parametrize("code", ["TransactionConflict", "ThrottlingError"])
@pytest.mark.parametrize("lock_lost", [False, True])
def test_an_answer_is_stored_through_a_transaction_cancelled_by_contention(
    store: Store, monkeypatch: pytest.MonkeyPatch, code: str, lock_lost: bool
) -> None:
    """A second tab's begin_turn on the same LOCK/META cancels the finishing transaction (TransactionConflict), as
    can throttling; botocore retries neither, so the store does, on its main path and on its lock-lost path."""
    conversation_id = new_id()
    turn = start(conversation_id, 0, "q", new=True, lock_seconds=60)
    run(store.begin_turn(turn))
    later = NOW + 2
    if lock_lost:  # the lock expired and another turn took it: the answer is stored without releasing it
        later = NOW + 100
        run(store.begin_turn(start(conversation_id, 1, "meanwhile", now=later - 1)))
    # Call 1 is the finishing transaction; with the lock lost, call 2 fails on its condition and 3 is the fallback.
    failing = {1: cancelled("None", code, "None")}
    if lock_lost:
        failing = {1: cancelled(code, "None", "None"), 3: cancelled("None", code)}
    calls = cancel_calls(store, monkeypatch, failing)
    run(store.finish_turn(end(turn, "the whole answer", now=later)))
    assert calls[0] == (4 if lock_lost else 2)
    loaded = run(store.load(ALICE, conversation_id, later + 1))
    assert loaded is not None
    assert [(m.role, m.content) for m in loaded.messages][:2] == [("user", "q"), ("assistant", "the whole answer")]
    if not lock_lost:  # the lock was released: the next message is taken at once
        run(store.begin_turn(start(conversation_id, 1, "next", now=later + 1)))


@pytest.mark.parametrize("store_url", ["dynamodb"], indirect=True)
@pytest.mark.parametrize("code", ["TransactionConflict", "ThrottlingError"])
def test_a_turn_cancelled_by_contention_is_unavailable_not_busy(
    store: Store, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """Contention or throttling (injected, see `cancelled`) is a transient 503, not the 409 of an answer in progress."""
    conversation_id = converse(store, ("q", "a"))
    cancel_calls(store, monkeypatch, {1: cancelled("None", "None", code)})
    with pytest.raises(StoreUnavailable):
        run(store.begin_turn(start(conversation_id, 1, "next", now=NOW + 100)))
    run(store.begin_turn(start(conversation_id, 1, "next", now=NOW + 101)))


def test_a_store_that_cannot_open_says_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = open_store(f"sqlite:///{tmp_path / 'file' / 'chat.sqlite3'}")
    assert store is not None
    with pytest.raises(StoreUnavailable) as raised:
        run(store.load(ALICE, new_id(), time.time()))
    assert "store" in str(raised.value)


@pytest.mark.parametrize(
    "url", ["", "sqlite://", "sqlite:///", "dynamodb://", "dynamodb://a/b", "postgres://x", "None"]
)
def test_unknown_store_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="CHAT_STORE_URL"):
        open_store(url)


def test_none_turns_the_store_off() -> None:
    assert open_store("none") is None


def test_the_functions_policy_allows_exactly_what_the_store_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every DynamoDB action a full conversation's life uses, recorded from the client, is the policy's list."""
    for name, value in dynamodb.TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    used: set[str] = set()
    transact = {
        "Put": "PutItem",
        "Update": "UpdateItem",
        "Delete": "DeleteItem",
        "ConditionCheck": "ConditionCheckItem",
    }

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "TransactWriteItems":
            used.update(transact[kind] for item in params["TransactItems"] for kind in item)
        else:
            used.add(model.name)

    with mock_aws():
        dynamodb.create_table(dynamodb.client(), "chat-policy")
        store = open_store("dynamodb://chat-policy")
        assert store is not None
        store.client().meta.events.register("provide-client-params.dynamodb.*", record)  # type: ignore[attr-defined]
        conversation_id = converse(store, ("q", "a"))
        turn = start(conversation_id, 1, "more", now=NOW + 20 * DAY)
        run(store.begin_turn(turn))
        run(store.request_stop(ALICE, conversation_id, NOW + 20 * DAY))
        run(store.stop_requested(ALICE, conversation_id, turn.turn_id))
        run(store.finish_turn(end(turn, "x" * 400_000, refresh_expiry=True)))
        run(store.list_conversations(ALICE, 10, None, NOW + 20 * DAY))
        run(store.load(ALICE, conversation_id, NOW + 20 * DAY))
        run(store.delete(ALICE, conversation_id, NOW + 20 * DAY))
        store.close()

    resources = dynamodb.template()["Resources"]
    policies = resources["ChatFunction"]["Properties"]["Policies"]
    [statement] = [s for p in policies if "Statement" in p for s in p["Statement"] if s["Sid"] == "ConversationStore"]
    assert {action.removeprefix("dynamodb:") for action in statement["Action"]} == used
    assert statement["Resource"] == [
        {"Fn::GetAtt": "ChatTable.Arn"},
        {"Fn::Sub": "${ChatTable.Arn}/index/gsi1"},
    ]


def test_sqlite_purges_expired_conversations_on_a_later_write(tmp_path: Path) -> None:
    """Invisible at once (above); gone from the file at the next write an hour or more later."""
    import sqlite3

    path = tmp_path / "chat.sqlite3"
    store = open_store(f"sqlite:///{path}")
    assert store is not None
    old = converse(store, ("old", "news"))
    later = NOW + 31 * DAY
    converse(store, ("fresh", "turn"), now=later)
    store.close()
    with sqlite3.connect(path) as db:
        for table, column in (("conversations", "id"), ("messages", "conversation_id"), ("locks", "conversation_id")):
            assert db.execute(f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (old,)).fetchone() == (0,)  # noqa: S608
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone() == (2,)


def fail_deletes_from(path: Path, table: str) -> None:
    """From now on a DELETE of a row of `table` fails inside SQLite (a trigger injects the failure a full
    disk or an I/O error would cause at that statement)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TRIGGER fail_{table} BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, 'injected'); END")


def test_sqlite_a_failed_purge_leaves_the_file_writable(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "chat.sqlite3"
    store = open_store(f"sqlite:///{path}")
    assert store is not None
    converse(store, ("old", "news"))
    fail_deletes_from(path, "messages")
    later = NOW + 31 * DAY + PURGE_INTERVAL_SECONDS
    with pytest.raises(StoreUnavailable):
        converse(store, ("purges", "first"), now=later)
    other = sqlite3.connect(path, timeout=0.5)
    other.execute("BEGIN IMMEDIATE")  # another process can write: the failed transaction was rolled back
    other.execute("ROLLBACK")
    other.close()
    fresh = converse(store, ("written", "anyway"), now=later + 10)
    loaded = run(store.load(ALICE, fresh, later + 100))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["written", "anyway"]
    store.close()


def test_sqlite_a_delete_that_fails_midway_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "chat.sqlite3"
    store = open_store(f"sqlite:///{path}")
    assert store is not None
    conversation_id = converse(store, ("keep", "me"))
    fail_deletes_from(path, "conversations")  # the last of its statements: the turns were deleted before it
    with pytest.raises(StoreUnavailable):
        run(store.delete(ALICE, conversation_id, NOW + 100))
    loaded = run(store.load(ALICE, conversation_id, NOW + 101))
    assert loaded is not None
    assert [m.content for m in loaded.messages] == ["keep", "me"]
    store.close()
