"""The store's interface: what a conversation is, and the few operations the service needs.

Every backend offers the same semantics, which the behavioural suite checks on each:

- one answer at a time per conversation: `begin_turn` takes a lock with an expiry
  (a crashed writer cannot hold it for good) and writes the user's turn in the same
  atomic step, so the turn is durable exactly when the lock is held;
- writes are idempotent, keyed by the turn's id and position: repeating
  `begin_turn` or `finish_turn` never duplicates a message;
- `finish_turn` stores the answer and releases the lock in one atomic step;
- a stop flag on the lock, set by `request_stop` from any process, read by
  `stop_requested` in the process that streams;
- expired conversations are invisible to every read, whatever the backend's purge lag;
- a resumable answer's events are kept as batches keyed by (turn, first event index),
  written in order by one writer, each with its own expiry (`write_events`, `read_events`).

Backends implement blocking methods (`_load`, ...); the async methods run them on the
store's own threads, so no call blocks the event loop.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import binascii
import collections
import datetime
import functools
import hashlib
import re
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, TypeVar

from ..usage import Usage

T = TypeVar("T")

ANSWER_STATUSES = frozenset({"complete", "error", "timeout", "stopped", "disconnected", "deadline"})
StopResult = Literal["missing", "stopping", "idle"]

_ID = re.compile(r"[0-9a-f]{32}")
_CURSOR = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)#([0-9a-f]{32})")


class StoreError(Exception):
    """Base of the store's errors; the message is safe to show a client."""


class StoreBusy(StoreError):
    """Another answer holds the conversation (or has just moved it on): 409."""


class ConversationNotFound(StoreError):
    """No such conversation for this caller, or it expired or was deleted: 404."""


class StoreUnavailable(StoreError):
    """The backend failed or could not be reached: 503."""


class BadCursor(StoreError):
    """A listing cursor this service did not issue: 400."""


def new_id() -> str:
    """A conversation or turn id: 128 random bits, lower-case hex."""
    return uuid.uuid4().hex


def valid_id(value: object) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def owner_key(owner: str) -> str:
    """The caller's identity as it appears in keys: a digest, so an ARN's text never becomes a key."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


def iso(epoch: float) -> str:
    """ISO 8601 in UTC with microseconds: sorts as text in time order."""
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def list_position(updated_at: str, conversation_id: str) -> str:
    """Where a conversation sits in its owner's newest-first list (also the cursor's content)."""
    return f"{updated_at}#{conversation_id}"


def encode_cursor(position: str) -> str:
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """`(updated_at, conversation_id)` of the last conversation on the previous page."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("cursor is not one this service issued") from None
    match = _CURSOR.fullmatch(text)
    if match is None or len(cursor) > 128:
        raise BadCursor("cursor is not one this service issued")
    return match.group(1), match.group(2)


@dataclass(frozen=True)
class Message:
    role: str
    content: str
    status: str
    created_at: str
    usage: Usage | None = None
    """An answer's tokens (reported by the model, or estimated); None for user turns and older answers."""


@dataclass(frozen=True)
class ConversationSummary:
    id: str
    title: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class Conversation:
    summary: ConversationSummary
    messages: tuple[Message, ...]
    next_seq: int
    """Position of the next turn (a user message and its answer share one)."""
    oldest_expiry: int
    """Epoch seconds at which the first of its turns would expire (one expiry per conversation: that one)."""


@dataclass(frozen=True)
class Page:
    conversations: tuple[ConversationSummary, ...]
    next_cursor: str | None


@dataclass(frozen=True)
class TurnStart:
    """The user's turn, and the lock for its answer."""

    owner: str
    conversation_id: str
    seq: int
    turn_id: str
    message: str
    now: float
    lock_until: float
    expires_at: int
    title: str | None = None
    """Set for the first turn: create the conversation with this title."""


@dataclass(frozen=True)
class TurnEnd:
    """The answer (whole or partial, with why it ended), which releases the lock."""

    owner: str
    conversation_id: str
    seq: int
    turn_id: str
    content: str
    status: str
    now: float
    expires_at: int
    refresh_expiry: bool = False
    """A stored turn would expire before `expires_at`: backends that keep an expiry per item move every
    item's forward (DynamoDB TTL)."""
    usage: Usage | None = None
    """The tokens this answer used, stored with it (None when the model was never reached)."""


@dataclass(frozen=True)
class EventBatch:
    """Consecutive events of one resumable answer, from index `first`: `(kind, data)` pairs.

    Kinds: `m` a message, `d` the `[DONE]` end, `e` an error end (data is its message).
    `ended_at` is set on the batch that holds the end."""

    owner: str
    conversation_id: str
    seq: int
    first: int
    events: tuple[tuple[str, str], ...]
    expires_at: int
    ended_at: float | None = None


@dataclass(frozen=True)
class AnswerEvents:
    """A resumable answer's stored batches from a given index on (`seq` None: no resumable answer)."""

    seq: int | None
    batches: tuple[EventBatch, ...]


class Store(abc.ABC):
    """The async interface; `calls` counts operations per name (for the benchmark's store rows)."""

    workers = 8

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self.calls: collections.Counter[str] = collections.Counter()

    async def _run(self, name: str, function: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"store-{name}")
        self.calls[name] += 1
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, function)

    @staticmethod
    def _guarded(function: Callable[[], T]) -> T:
        """Any failure of the backend itself becomes StoreUnavailable, named but without details."""
        try:
            return function()
        except StoreError:
            raise
        except Exception as error:
            raise StoreUnavailable(f"The conversation store failed ({type(error).__name__}).") from error

    async def load(self, owner: str, conversation_id: str, now: float) -> Conversation | None:
        """The conversation and its messages, oldest first; None when missing, expired or not the owner's."""
        return await self._run("load", functools.partial(self._load, owner, conversation_id, now))

    async def list_conversations(self, owner: str, limit: int, cursor: str | None, now: float) -> Page:
        """The owner's conversations, most recently active first."""
        return await self._run("list", functools.partial(self._list, owner, limit, cursor, now))

    async def begin_turn(self, start: TurnStart) -> None:
        """Lock the conversation and store the user's turn, atomically (StoreBusy, ConversationNotFound)."""
        await self._run("begin_turn", functools.partial(self._begin_turn, start))

    async def finish_turn(self, end: TurnEnd) -> None:
        """Store the answer and release the lock, atomically; a deleted conversation stays deleted."""
        await self._run("finish_turn", functools.partial(self._finish_turn, end))

    async def request_stop(self, owner: str, conversation_id: str, now: float) -> StopResult:
        """Flag the answer in progress to stop: "stopping", "idle" (none in progress) or "missing"."""
        return await self._run("request_stop", functools.partial(self._request_stop, owner, conversation_id, now))

    async def stop_requested(self, owner: str, conversation_id: str, turn_id: str) -> bool:
        """True when this turn should stop: flagged, or its lock is gone or someone else's."""
        return await self._run(
            "stop_requested", functools.partial(self._stop_requested, owner, conversation_id, turn_id)
        )

    async def write_events(self, batch: EventBatch) -> None:
        """Store (or replace) one batch of a resumable answer's events."""
        await self._run("write_events", functools.partial(self._write_events, batch))

    async def read_events(
        self, owner: str, conversation_id: str, seq: int | None, since: int, now: float, *, check: bool
    ) -> AnswerEvents | None:
        """The unexpired batches of answer `seq` (None: the newest resumable one) starting at or after index
        `since`; with `check`, None when the conversation is not the owner's (or gone)."""
        return await self._run(
            "read_events", functools.partial(self._read_events, owner, conversation_id, seq, since, now, check)
        )

    async def take_follower_slot(
        self, owner: str, conversation_id: str, seq: int, slots: int, until: float, now: float
    ) -> int | None:
        """Lease one of `slots` follower slots of answer `seq` until `until`; None when all are taken."""
        return await self._run(
            "take_follower_slot",
            functools.partial(self._take_follower_slot, owner, conversation_id, seq, slots, until, now),
        )

    async def release_follower_slot(self, owner: str, conversation_id: str, seq: int, slot: int) -> None:
        await self._run(
            "release_follower_slot", functools.partial(self._release_follower_slot, owner, conversation_id, seq, slot)
        )

    async def delete(self, owner: str, conversation_id: str, now: float) -> bool:
        """Remove every item of the conversation; False when there was no such conversation."""
        return await self._run("delete", functools.partial(self._delete, owner, conversation_id, now))

    @abc.abstractmethod
    def warm(self) -> None:
        """Before a SnapStart snapshot: pay for imports the first call would make."""

    @abc.abstractmethod
    def reset(self) -> None:
        """After a SnapStart restore: forget clients and connections made before the snapshot."""

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @abc.abstractmethod
    def _load(self, owner: str, conversation_id: str, now: float) -> Conversation | None: ...

    @abc.abstractmethod
    def _list(self, owner: str, limit: int, cursor: str | None, now: float) -> Page: ...

    @abc.abstractmethod
    def _begin_turn(self, start: TurnStart) -> None: ...

    @abc.abstractmethod
    def _finish_turn(self, end: TurnEnd) -> None: ...

    @abc.abstractmethod
    def _request_stop(self, owner: str, conversation_id: str, now: float) -> StopResult: ...

    @abc.abstractmethod
    def _stop_requested(self, owner: str, conversation_id: str, turn_id: str) -> bool: ...

    @abc.abstractmethod
    def _delete(self, owner: str, conversation_id: str, now: float) -> bool: ...

    @abc.abstractmethod
    def _write_events(self, batch: EventBatch) -> None: ...

    @abc.abstractmethod
    def _take_follower_slot(
        self, owner: str, conversation_id: str, seq: int, slots: int, until: float, now: float
    ) -> int | None: ...

    @abc.abstractmethod
    def _release_follower_slot(self, owner: str, conversation_id: str, seq: int, slot: int) -> None: ...

    @abc.abstractmethod
    def _read_events(
        self, owner: str, conversation_id: str, seq: int | None, since: int, now: float, check: bool
    ) -> AnswerEvents | None: ...
