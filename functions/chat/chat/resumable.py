"""Resumable answers: the producer journals an answer's events to the store; followers replay, then tail.

The producer (`Journal`) gives every event an id `<turn seq>-<index>`, keeps the answer's
events in memory for followers in the same process (woken directly), and writes them
to the store in the background, in batches bounded by time and size, so the first
token never waits for a write. The last batch, which holds the end (`[DONE]` or the
error), is written before the producer's last event goes out.

A follower (`FollowStream`) replays every event after the client's last id and then
follows the answer until its end: from memory when the producer is in this process,
otherwise by reading the store at a bounded rate. Events carry their index, so the seam
between replay and live has no gap and no duplicate by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from . import sse
from .config import Settings
from .conversation import NOT_FOUND
from .observability import logger
from .store.base import AnswerEvents, ConversationNotFound, EventBatch, Store, StoreError, owner_key

MESSAGE, DONE, ERROR = "m", "d", "e"
Event = tuple[str, str]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_EVENT_ID = re.compile(r"(\d{1,8})-(\d{1,9})")
FINAL_WRITE_ATTEMPTS = 3
FIRST_BATCH_GRACE_SECONDS = 3.0
VANISHED = "The answer stopped arriving (its producer is gone); it is incomplete."


def parse_event_id(text: str) -> tuple[int, int] | None:
    """`(seq, index)` of an id this service sent, else None."""
    match = _EVENT_ID.fullmatch(text.strip())
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def frame(seq: int, index: int, event: Event) -> bytes:
    """One event with its `id:` line; the rest is exactly the stateless framing."""
    kind, data = event
    body = sse.message(data) if kind == MESSAGE else sse.DONE if kind == DONE else sse.error(data)
    return f"id:{seq}-{index}\n".encode() + body


@dataclass
class LiveAnswer:
    """An answer being produced in this process: its events so far, and a wake-up for its followers."""

    seq: int
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, events: list[Event]) -> None:
        self.events.extend(events)
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class Resumables:
    """This process's live answers, by owner and conversation, for followers in the same process."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.live: dict[tuple[str, str], LiveAnswer] = {}

    def journal(self, owner: str, conversation_id: str, seq: int) -> Journal:
        return Journal(self, owner, conversation_id, seq)

    def expiry(self, now: float) -> int:
        """Events outlive the longest an answer may run, plus how long a finished one stays resumable."""
        return int(now + self.settings.answer_lock_seconds + self.settings.resume_ttl_seconds) + 1


class Journal:
    """The producer's side: frames events with ids, keeps them for followers, and writes them in batches."""

    def __init__(self, answers: Resumables, owner: str, conversation_id: str, seq: int) -> None:
        self.answers = answers
        self.settings = answers.settings
        self.owner = owner
        self.conversation_id = conversation_id
        self.key = (owner_key(owner), conversation_id)
        self.live = LiveAnswer(seq)
        self.expires_at = answers.expiry(time.time())
        self.written = 0  # index of the first event not yet written
        self.queued: list[Event] = []
        self.queued_bytes = 0
        self.pending = asyncio.Event()
        self.full = asyncio.Event()
        self.closing = False
        self.writer: asyncio.Task[None] | None = None

    @property
    def seq(self) -> int:
        return self.live.seq

    def start(self) -> None:
        """The stream begins: followers in this process find it; elsewhere, an empty first batch says so."""
        self.answers.live[self.key] = self.live
        self.writer = asyncio.ensure_future(self._write_loop())

    def messages(self, contents: list[str]) -> bytes:
        """Record relayed deltas; their framed bytes, each with its id."""
        first = len(self.live.events)
        events = [(MESSAGE, content) for content in contents]
        self.live.add(events)
        self._queue(events)
        return b"".join(frame(self.seq, first + offset, event) for offset, event in enumerate(events))

    async def end(self, kind: str | None, message: str) -> bytes:
        """Record the end, write everything still queued, and return the last event's bytes."""
        ending: Event = (DONE, "") if kind is None else (ERROR, message)
        index = len(self.live.events)
        self.live.add([ending])
        self._queue([ending])
        self.closing = True
        self.full.set()
        try:
            if self.writer is not None:
                await asyncio.shield(self.writer)
        finally:
            if self.answers.live.get(self.key) is self.live:
                del self.answers.live[self.key]
        return frame(self.seq, index, ending)

    async def abandon(self) -> None:
        """If the producer failed before its end, end the answer with an error: its followers would wait forever."""
        if self.writer is not None and not self.closing:
            await self.end(ERROR, VANISHED)

    def _queue(self, events: list[Event]) -> None:
        self.queued.extend(events)
        self.queued_bytes += sum(len(data) for _, data in events)
        self.pending.set()
        if self.queued_bytes >= self.settings.resume_batch_bytes:
            self.full.set()

    async def _write(self, first: int, events: list[Event], ended: bool) -> bool:
        batch = EventBatch(
            self.owner,
            self.conversation_id,
            self.seq,
            first,
            tuple(events),
            self.expires_at,
            time.time() if ended else None,
        )
        try:
            await self.answers.store.write_events(batch)
        except StoreError:
            logger.warning("resumable events could not be stored", conversation_id=self.conversation_id)
            return False
        return True

    async def _write_loop(self) -> None:
        """One writer, in order: a batch goes out when it is due (time) or full (size), or at the end.

        A failed batch is retried as it was, never with more events: it may have been stored after all,
        and a follower that read it goes on from its end, so a longer replacement would hide the extra."""
        await self._write(0, [], False)
        failures = 0
        retry: list[Event] = []
        while True:
            if retry:
                events, retry = retry, []
            else:
                await self.pending.wait()
                if not self.closing:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.settings.resume_batch_seconds):
                            await self.full.wait()
                events = self.queued
                self.queued, self.queued_bytes = [], 0
                self.pending.clear()
                self.full.clear()
                if not events:
                    continue
            ended = self.closing and events[-1][0] != MESSAGE
            if await self._write(self.written, events, ended):
                self.written += len(events)
                failures = 0
                if ended:
                    return
            else:
                retry = events
                failures += 1
                if self.closing and failures >= FINAL_WRITE_ATTEMPTS:
                    return
                await asyncio.sleep(self.settings.resume_batch_seconds)


class EventIdAhead(Exception):
    """The client's last id is beyond the answer's events: not an id this answer sent."""


class FollowerLimit(Exception):
    """The answer already has as many followers as allowed."""


@dataclass
class Follow:
    """What a follower will read: answer `seq` from index `since`, from memory or from the store."""

    seq: int
    since: int
    live: LiveAnswer | None
    batches: tuple[EventBatch, ...]


async def find(
    answers: Resumables, owner: str, conversation_id: str, last: tuple[int, int] | None, now: float
) -> Follow | None:
    """The answer to follow, or None when nothing is resumable (ConversationNotFound: not the owner's)."""
    since = 0 if last is None else last[1] + 1
    live = answers.live.get((owner_key(owner), conversation_id))
    if live is not None and (last is None or last[0] == live.seq):
        ended = bool(live.events) and live.events[-1][0] != MESSAGE
        return Follow(live.seq, since, live, ()) if _after(since, len(live.events), ended) else None
    found = await answers.store.read_events(
        owner, conversation_id, None if last is None else last[0], 0, now, check=True
    )
    if found is None:
        raise ConversationNotFound(NOT_FOUND)
    if last is not None and not found.batches:
        # The client saw events of this answer, so it began; its first batch may still be on its way
        # (written in the background): wait a few batch intervals before calling it gone.
        settings = answers.settings
        give_up = time.monotonic() + 2 * settings.resume_batch_seconds + FIRST_BATCH_GRACE_SECONDS
        while not found.batches and time.monotonic() < give_up:
            await asyncio.sleep(settings.resume_poll_seconds)
            found = await answers.store.read_events(owner, conversation_id, last[0], 0, time.time(), check=False)
            found = found or AnswerEvents(None, ())
    if found.seq is None or not found.batches:
        return None
    final = found.batches[-1]
    if final.ended_at is not None and final.ended_at + answers.settings.resume_ttl_seconds < now:
        return None
    count = final.first + len(final.events)
    # Stored events may lag what the client saw from the producer: only an ended answer's count is known.
    if final.ended_at is not None and not _after(since, count, True):
        return None
    return Follow(found.seq, since, None, found.batches)


def _after(since: int, count: int, ended: bool) -> bool:
    """Whether events after `since` remain to follow, of an answer with `count` events so far (EventIdAhead)."""
    if since > count:
        raise EventIdAhead
    return not (ended and since == count)


def silence_limit(settings: Settings) -> float:
    """How long a follower waits for the next event before calling the producer gone: longer than
    the producer's own limits on silence, plus a batch's time to reach the store."""
    return max(settings.first_token_timeout, settings.idle_timeout) + 2 * settings.resume_batch_seconds + 5


async def _from_memory(live: LiveAnswer, since: int, limit: float) -> AsyncGenerator[tuple[int, Event], None]:
    loop = asyncio.get_running_loop()
    index, progress = since, loop.time()
    while True:
        changed = live.changed
        while index < len(live.events):
            event = live.events[index]
            yield index, event
            if event[0] != MESSAGE:
                return
            index += 1
            progress = loop.time()
        try:
            async with asyncio.timeout_at(progress + limit):
                await changed.wait()
        except TimeoutError:
            yield -1, (ERROR, VANISHED)
            return


async def _from_store(
    answers: Resumables, owner: str, conversation_id: str, follow: Follow
) -> AsyncGenerator[tuple[int, Event], None]:
    """Replay the stored batches, then poll for more at CHAT_RESUME_POLL_SECONDS until the end."""
    settings = answers.settings
    loop = asyncio.get_running_loop()
    limit = silence_limit(settings)
    index, batches, progress = follow.since, follow.batches, loop.time()
    floor = 0  # batches are contiguous: the one holding `index` starts at or after the end of those seen
    while True:
        for batch in batches:
            floor = max(floor, batch.first + len(batch.events))
            for offset, event in enumerate(batch.events):
                if batch.first + offset != index:
                    continue  # before the client's last id (or a gap one writer never leaves)
                yield index, event
                if event[0] != MESSAGE:
                    return
                index += 1
                progress = loop.time()
        floor = min(floor, index)
        if loop.time() - progress > limit:
            yield -1, (ERROR, VANISHED)
            return
        await asyncio.sleep(settings.resume_poll_seconds)
        try:
            found = await answers.store.read_events(owner, conversation_id, follow.seq, floor, time.time(), check=False)
        except StoreError:
            logger.warning("resumable events could not be read", conversation_id=conversation_id)
            batches = ()
            continue
        batches = () if found is None else found.batches


class FollowStream(Response):
    """`GET /api/conversations/{id}/stream`: the answer's events after the client's last id, then live."""

    media_type = "text/event-stream"

    def __init__(self, answers: Resumables, owner: str, conversation_id: str, follow: Follow, slot: int) -> None:
        self.answers = answers
        self.owner = owner
        self.conversation_id = conversation_id
        self.follow = follow
        self.slot = slot
        self.background = None

    @classmethod
    async def open(
        cls, answers: Resumables, owner: str, conversation_id: str, follow: Follow, remaining: float | None
    ) -> FollowStream:
        """Lease a follower slot in the store (counted across every process and Lambda instance), or FollowerLimit.

        The lease ends with the follower, or at the latest when its invocation or the longest answer would."""
        now = time.time()
        lifetime = answers.settings.answer_lock_seconds if remaining is None else remaining
        slot = await answers.store.take_follower_slot(
            owner, conversation_id, follow.seq, answers.settings.resume_max_followers, now + lifetime, now
        )
        if slot is None:
            raise FollowerLimit
        return cls(answers, owner, conversation_id, follow, slot)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.ensure_future(self._relay(scope, send))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((relay, listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, listener):
                task.cancel()
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            finally:  # even when the relay failed: a kept slot would refuse followers until its lease ends
                await self._release()

    async def _release(self) -> None:
        try:
            await self.answers.store.release_follower_slot(self.owner, self.conversation_id, self.follow.seq, self.slot)
        except StoreError:
            logger.warning("a follower slot could not be released", conversation_id=self.conversation_id)

    async def _relay(self, scope: Scope, send: Send) -> None:
        settings = self.answers.settings
        loop = asyncio.get_running_loop()
        headers = [*SSE_HEADERS, (b"x-conversation-id", self.conversation_id.encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        context = scope.get("aws.context")
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        deadline = None if remaining is None else loop.time() + remaining() / 1000 - settings.deadline_margin_seconds
        if self.follow.live is not None:
            events = _from_memory(self.follow.live, self.follow.since, silence_limit(settings))
        else:
            events = _from_store(self.answers, self.owner, self.conversation_id, self.follow)
        last_out = loop.time()

        async def heartbeat() -> None:
            nonlocal last_out
            while True:
                await asyncio.sleep(max(0.0, last_out + settings.heartbeat_seconds - loop.time()))
                if loop.time() >= last_out + settings.heartbeat_seconds:
                    last_out = loop.time()  # the keep-alive is output too: the next one is a heartbeat later
                    await send({"type": "http.response.body", "body": sse.HEARTBEAT, "more_body": True})

        beats = asyncio.ensure_future(heartbeat())
        try:
            # On Lambda the follower ends before its invocation does, without an end event:
            # the answer is not over, and the client reconnects with its last id.
            async with asyncio.timeout_at(deadline), contextlib.aclosing(events) as reads:
                async for index, event in reads:
                    body = sse.error(event[1]) if index < 0 else frame(self.follow.seq, index, event)
                    more = event[0] == MESSAGE
                    await send({"type": "http.response.body", "body": body, "more_body": more})
                    last_out = loop.time()
                    if not more:
                        return
        except TimeoutError:
            pass
        finally:
            beats.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
