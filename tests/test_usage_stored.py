"""An answer stored in a conversation carries the tokens it used, on both store backends.

Real parts: the app under uvicorn, the fake model reporting usage like OpenAI, and the
store: SQLite on a temp file, or DynamoDB through moto in process (AWS itself cannot
run here; the table comes from template.yaml).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx

from chat.store import open_store
from chat.usage import estimate_messages, estimate_text
from tests.harness.fake_openai import Delta, FakeOpenAI, Reset, deltas
from tests.harness.support import AppServer, post_stream, settings_for, unique


def conversation(url: str, conversation_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = httpx.get(f"{url}/api/conversations/{conversation_id}", timeout=10).json()[
        "messages"
    ]
    return messages


def test_a_stored_answer_carries_its_reported_and_estimated_usage(fake: FakeOpenAI, store_url: str) -> None:
    first = fake.script(unique("stored"), deltas("Paris", " is", " big"))
    with AppServer(settings_for(fake, store_url=store_url)) as server:
        started = post_stream(server.url, {"message": first, "store": True})
        conversation_id = started.headers["x-conversation-id"]
        cut = fake.script(unique("cut"), [Delta("partial"), Reset()])
        continued = post_stream(server.url, {"message": cut, "conversation_id": conversation_id})
        assert continued.events[-1][0] == "error"
        messages = conversation(server.url, conversation_id)
    user, answer, user_again, partial = messages
    assert "usage" not in user
    assert "usage" not in user_again
    prompt = fake.requests_for(first)[0].prompt_tokens
    assert answer["usage"] == {"prompt_tokens": prompt, "completion_tokens": 3, "source": "reported"}
    sent = fake.requests_for(cut)[0].json["messages"]
    assert isinstance(sent, list)
    assert (partial["status"], partial["usage"]) == (
        "error",
        {
            "prompt_tokens": estimate_messages(sent),
            "completion_tokens": estimate_text("partial"),
            "source": "estimated",
        },
    )


def test_a_sqlite_file_from_before_usage_gains_its_columns(tmp_path: Path) -> None:
    """A store file written before answers carried usage opens, and its old answers have none."""
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE messages (owner TEXT NOT NULL, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL,"
            " part INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL,"
            " created_at TEXT NOT NULL, turn_id TEXT NOT NULL, PRIMARY KEY (owner, conversation_id, seq, part))"
            " WITHOUT ROWID"
        )
    store = open_store(f"sqlite:///{path}")
    assert store is not None
    try:
        store._db()  # type: ignore[attr-defined]  # opening migrates
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
    assert {"prompt_tokens", "completion_tokens", "usage"} <= columns
