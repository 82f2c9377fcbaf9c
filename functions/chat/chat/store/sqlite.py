"""The embedded backend: one SQLite file (standard library), shared safely by several processes.

WAL mode lets readers run beside the one writer; every write is a `BEGIN IMMEDIATE`
transaction, so the lock check and the writes that depend on it are atomic across
processes too. One connection, used by one store thread, per process.
Expired conversations are purged at most once an hour, by the process that writes.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ..sqlite_file import SQLiteFile
from ..usage import Usage
from .base import (
    AnswerEvents,
    Conversation,
    ConversationNotFound,
    ConversationSummary,
    EventBatch,
    Message,
    Page,
    StopResult,
    Store,
    StoreBusy,
    StoreUnavailable,
    TurnEnd,
    TurnStart,
    decode_cursor,
    encode_cursor,
    iso,
    list_position,
    owner_key,
)

PURGE_INTERVAL_SECONDS = 3600.0
USER, ANSWER = 0, 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    owner TEXT NOT NULL, id TEXT NOT NULL, title TEXT NOT NULL,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (owner, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS conversations_newest ON conversations (owner, updated_at, id);
CREATE TABLE IF NOT EXISTS messages (
    owner TEXT NOT NULL, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, part INTEGER NOT NULL,
    role TEXT NOT NULL, content TEXT NOT NULL, status TEXT NOT NULL, created_at TEXT NOT NULL,
    turn_id TEXT NOT NULL,
    PRIMARY KEY (owner, conversation_id, seq, part)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS locks (
    owner TEXT NOT NULL, conversation_id TEXT NOT NULL, turn_id TEXT NOT NULL,
    expires_at REAL NOT NULL, stop INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (owner, conversation_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS answer_events (
    owner TEXT NOT NULL, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, first INTEGER NOT NULL,
    events TEXT NOT NULL, ended_at REAL, expires_at INTEGER NOT NULL,
    PRIMARY KEY (owner, conversation_id, seq, first)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS followers (
    owner TEXT NOT NULL, conversation_id TEXT NOT NULL, seq INTEGER NOT NULL, slot INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (owner, conversation_id, seq, slot)) WITHOUT ROWID;
"""


def _add_usage_columns(connection: sqlite3.Connection) -> None:
    """Answers carry their token usage; a file made before that gains the (empty) columns."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(messages)")}
    for column, kind in (("prompt_tokens", "INTEGER"), ("completion_tokens", "INTEGER"), ("usage", "TEXT")):
        if column not in present:
            try:
                connection.execute(f"ALTER TABLE messages ADD COLUMN {column} {kind}")
            except sqlite3.OperationalError as error:  # another process added it first
                if "duplicate column" not in str(error):
                    raise


class SQLiteStore(Store):
    workers = 1  # the one connection is used by one thread

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = SQLiteFile(path, SCHEMA, _add_usage_columns)
        self._last_purge = 0.0

    def _db(self) -> sqlite3.Connection:
        try:
            return self._file.connection()
        except (OSError, sqlite3.Error) as error:
            raise StoreUnavailable(f"The conversation store could not be opened: {error}") from None

    def warm(self) -> None:
        """Nothing to import: sqlite3 is part of the standard library and already loaded."""

    def reset(self) -> None:
        self._file.close()

    def close(self) -> None:
        super().close()
        self._file.close()

    @contextlib.contextmanager
    def _write(self, now: float) -> Iterator[sqlite3.Connection]:
        """One write transaction (purging expired conversations first, hourly): committed when the block
        ends, rolled back on any error, so a failure never leaves the file locked or half changed."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            if now - self._last_purge >= PURGE_INTERVAL_SECONDS:
                self._last_purge = now
                expired = "SELECT owner, id FROM conversations WHERE expires_at <= ?"
                db.execute(f"DELETE FROM messages WHERE (owner, conversation_id) IN ({expired})", (now,))  # noqa: S608
                db.execute(f"DELETE FROM locks WHERE (owner, conversation_id) IN ({expired})", (now,))  # noqa: S608
                db.execute("DELETE FROM answer_events WHERE expires_at <= ?", (now,))
                db.execute("DELETE FROM followers WHERE expires_at <= ?", (now,))
                db.execute("DELETE FROM conversations WHERE expires_at <= ?", (now,))
            yield db
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _summary(
        self, db: sqlite3.Connection, owner: str, conversation_id: str, now: float
    ) -> ConversationSummary | None:
        row = db.execute(
            "SELECT title, created_at, updated_at FROM conversations WHERE owner = ? AND id = ? AND expires_at > ?",
            (owner, conversation_id, now),
        ).fetchone()
        return None if row is None else ConversationSummary(conversation_id, row[0], row[1], row[2])

    def _load(self, owner: str, conversation_id: str, now: float) -> Conversation | None:
        owner = owner_key(owner)
        db = self._db()
        try:
            db.execute("BEGIN")
            row = db.execute(
                "SELECT title, created_at, updated_at, expires_at FROM conversations"
                " WHERE owner = ? AND id = ? AND expires_at > ?",
                (owner, conversation_id, now),
            ).fetchone()
            if row is None:
                return None
            rows = db.execute(
                "SELECT seq, role, content, status, created_at, prompt_tokens, completion_tokens, usage FROM messages"
                " WHERE owner = ? AND conversation_id = ? ORDER BY seq, part",
                (owner, conversation_id),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        messages = tuple(
            Message(role, content, status, created, None if source is None else Usage(prompt, completion, source))
            for _, role, content, status, created, prompt, completion, source in rows
        )
        next_seq = rows[-1][0] + 1 if rows else 0
        return Conversation(ConversationSummary(conversation_id, *row[:3]), messages, next_seq, row[3])

    def _list(self, owner: str, limit: int, cursor: str | None, now: float) -> Page:
        owner = owner_key(owner)
        query = "SELECT id, title, created_at, updated_at FROM conversations WHERE owner = ? AND expires_at > ?"
        parameters: list[object] = [owner, now]
        if cursor is not None:
            query += " AND (updated_at, id) < (?, ?)"
            parameters.extend(decode_cursor(cursor))
        query += " ORDER BY updated_at DESC, id DESC LIMIT ?"
        parameters.append(limit + 1)
        rows = self._db().execute(query, parameters).fetchall()
        summaries = tuple(ConversationSummary(*row) for row in rows[:limit])
        more = len(rows) > limit
        last = summaries[-1] if summaries else None
        next_cursor = encode_cursor(list_position(last.updated_at, last.id)) if more and last else None
        return Page(summaries, next_cursor)

    def _begin_turn(self, start: TurnStart) -> None:
        owner, cid = owner_key(start.owner), start.conversation_id
        with self._write(start.now) as db:
            stamp = iso(start.now)
            if start.title is not None:
                db.execute(
                    "INSERT OR IGNORE INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
                    (owner, cid, start.title, stamp, stamp, start.expires_at),
                )
            elif self._summary(db, owner, cid, start.now) is None:
                raise ConversationNotFound("Conversation not found.")
            lock = db.execute(
                "SELECT turn_id, expires_at FROM locks WHERE owner = ? AND conversation_id = ?", (owner, cid)
            ).fetchone()
            if lock is not None and lock[0] != start.turn_id and lock[1] > start.now:
                raise StoreBusy("An answer is already in progress in this conversation.")
            taken = db.execute(
                "SELECT turn_id FROM messages WHERE owner = ? AND conversation_id = ? AND seq >= ? AND part = ?",
                (owner, cid, start.seq, USER),
            ).fetchall()
            if any(row[0] != start.turn_id for row in taken):
                raise StoreBusy("Another answer was written to this conversation meanwhile; reload it.")
            db.execute(
                "INSERT OR REPLACE INTO locks VALUES (?, ?, ?, ?, 0)", (owner, cid, start.turn_id, start.lock_until)
            )
            db.execute(
                "INSERT OR IGNORE INTO messages (owner, conversation_id, seq, part, role, content, status, created_at,"
                " turn_id) VALUES (?, ?, ?, ?, 'user', ?, 'complete', ?, ?)",
                (owner, cid, start.seq, USER, start.message, stamp, start.turn_id),
            )
            db.execute(
                "UPDATE conversations SET updated_at = ?, expires_at = ? WHERE owner = ? AND id = ?",
                (stamp, start.expires_at, owner, cid),
            )

    def _finish_turn(self, end: TurnEnd) -> None:
        owner, cid = owner_key(end.owner), end.conversation_id
        with self._write(end.now) as db:
            db.execute(
                "DELETE FROM locks WHERE owner = ? AND conversation_id = ? AND turn_id = ?", (owner, cid, end.turn_id)
            )
            stamp = iso(end.now)
            updated = db.execute(
                "UPDATE conversations SET updated_at = ?, expires_at = ? WHERE owner = ? AND id = ?",
                (stamp, end.expires_at, owner, cid),
            )
            if updated.rowcount:
                usage = end.usage
                db.execute(
                    "INSERT OR REPLACE INTO messages (owner, conversation_id, seq, part, role, content, status,"
                    " created_at, turn_id, prompt_tokens, completion_tokens, usage)"
                    " VALUES (?, ?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        owner,
                        cid,
                        end.seq,
                        ANSWER,
                        end.content,
                        end.status,
                        stamp,
                        end.turn_id,
                        None if usage is None else usage.prompt_tokens,
                        None if usage is None else usage.completion_tokens,
                        None if usage is None else usage.source,
                    ),
                )

    def _request_stop(self, owner: str, conversation_id: str, now: float) -> StopResult:
        owner = owner_key(owner)
        with self._write(now) as db:
            if self._summary(db, owner, conversation_id, now) is None:
                return "missing"
            flagged = db.execute(
                "UPDATE locks SET stop = 1 WHERE owner = ? AND conversation_id = ? AND expires_at > ?",
                (owner, conversation_id, now),
            )
            return "stopping" if flagged.rowcount else "idle"

    def _stop_requested(self, owner: str, conversation_id: str, turn_id: str) -> bool:
        row = (
            self._db()
            .execute(
                "SELECT turn_id, stop FROM locks WHERE owner = ? AND conversation_id = ?",
                (owner_key(owner), conversation_id),
            )
            .fetchone()
        )
        return row is None or row[0] != turn_id or bool(row[1])

    def _delete(self, owner: str, conversation_id: str, now: float) -> bool:
        owner = owner_key(owner)
        with self._write(now) as db:
            found = self._summary(db, owner, conversation_id, now) is not None
            if found:
                for table, column in (
                    ("messages", "conversation_id"),
                    ("answer_events", "conversation_id"),
                    ("followers", "conversation_id"),
                    ("locks", "conversation_id"),
                    ("conversations", "id"),
                ):
                    db.execute(f"DELETE FROM {table} WHERE owner = ? AND {column} = ?", (owner, conversation_id))  # noqa: S608
        return found

    def _write_events(self, batch: EventBatch) -> None:
        self._db().execute(
            "INSERT OR REPLACE INTO answer_events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                owner_key(batch.owner),
                batch.conversation_id,
                batch.seq,
                batch.first,
                json.dumps(batch.events, ensure_ascii=False),
                batch.ended_at,
                batch.expires_at,
            ),
        )

    def _read_events(
        self, owner: str, conversation_id: str, seq: int | None, since: int, now: float, check: bool
    ) -> AnswerEvents | None:
        key = owner_key(owner)
        db = self._db()
        try:
            db.execute("BEGIN")
            if check and self._summary(db, key, conversation_id, now) is None:
                return None
            if seq is None:
                row = db.execute(
                    "SELECT MAX(seq) FROM answer_events WHERE owner = ? AND conversation_id = ? AND expires_at > ?",
                    (key, conversation_id, now),
                ).fetchone()
                seq = row[0]
                if seq is None:
                    return AnswerEvents(None, ())
            rows = db.execute(
                "SELECT first, events, ended_at, expires_at FROM answer_events WHERE owner = ?"
                " AND conversation_id = ? AND seq = ? AND first >= ? AND expires_at > ? ORDER BY first",
                (key, conversation_id, seq, since, now),
            ).fetchall()
        finally:
            db.execute("COMMIT")
        batches = tuple(
            EventBatch(owner, conversation_id, seq, first, tuple((k, d) for k, d in json.loads(events)), expires, ended)
            for first, events, ended, expires in rows
        )
        return AnswerEvents(seq, batches)

    def _take_follower_slot(
        self, owner: str, conversation_id: str, seq: int, slots: int, until: float, now: float
    ) -> int | None:
        key = owner_key(owner)
        with self._write(now) as db:
            taken = {
                row[0]
                for row in db.execute(
                    "SELECT slot FROM followers WHERE owner = ? AND conversation_id = ? AND seq = ? AND expires_at > ?",
                    (key, conversation_id, seq, now),
                )
            }
            free = next((slot for slot in range(slots) if slot not in taken), None)
            if free is not None:
                db.execute(
                    "INSERT OR REPLACE INTO followers VALUES (?, ?, ?, ?, ?)", (key, conversation_id, seq, free, until)
                )
        return free

    def _release_follower_slot(self, owner: str, conversation_id: str, seq: int, slot: int) -> None:
        self._db().execute(
            "DELETE FROM followers WHERE owner = ? AND conversation_id = ? AND seq = ? AND slot = ?",
            (owner_key(owner), conversation_id, seq, slot),
        )
