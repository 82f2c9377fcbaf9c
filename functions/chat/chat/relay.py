"""The ASGI response that opens the upstream stream and relays it as SSE.

It is a raw ASGI callable rather than a StreamingResponse because it must do four
things at once: watch for the client leaving (and cancel the upstream, even before
upstream headers), send headers only once the upstream accepted the request (so a
refusal is still a clean JSON error), keep silent connections alive with SSE
comments, and end a stalled or over-long stream with `event:error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import observability, sse, stream_trailers
from .chat_request import ChatRequest
from .config import Settings
from .conversation import STOPPED, ConversationTurn
from .store.base import ConversationNotFound, StoreBusy, StoreError
from .upstream import OpenStream, StreamFailed, Upstream, UpstreamError
from .usage import NO_USAGE, Usage, estimate_messages, estimate_text

if TYPE_CHECKING:
    from .resumable import Journal

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def json_body(payload: dict[str, str]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class _Watchdog:
    """Heartbeats during silence, and the first-token / idle / deadline limits.

    The relay loop only stamps `last_in` / `last_out`; this task does all the timing,
    so a fast stream pays no timer cost per chunk.
    """

    def __init__(self, settings: Settings, first_token_due: float, deadline: float | None, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.settings = settings
        self.deadline = deadline
        self.send = send
        self.first_token_due = first_token_due
        self.last_in = self.last_out = loop.time()
        self.got_first = False
        self.sending = False
        self.reason = ""
        self.kind = ""

    async def run(self, timeout: asyncio.Timeout) -> None:
        settings = self.settings
        while True:
            now = self.loop.time()
            due = self.last_in + settings.idle_timeout if self.got_first else self.first_token_due
            if self.deadline is not None and self.deadline < due:
                due = self.deadline
            if now >= due:
                self.reason = self._reason(now)
                self.kind = "deadline" if self.deadline is not None and now >= self.deadline else "timeout"
                timeout.reschedule(now)
                return
            beat = self.last_out + settings.heartbeat_seconds
            if now >= beat:
                self.last_out = now
                if not self.sending:
                    with contextlib.suppress(Exception):
                        await self.send({"type": "http.response.body", "body": sse.HEARTBEAT, "more_body": True})
                beat = now + settings.heartbeat_seconds
            await asyncio.sleep(min(due, beat) - now)

    def interrupt(self, timeout: asyncio.Timeout, kind: str, reason: str) -> None:
        """End the relay now (a stop asked for from elsewhere), the way a limit ends it."""
        self.kind, self.reason = kind, reason
        timeout.reschedule(self.loop.time())

    def _reason(self, now: float) -> str:
        if self.deadline is not None and now >= self.deadline:
            return "The response time limit was reached; the answer is incomplete."
        if self.got_first:
            return f"The model stopped sending data for {self.settings.idle_timeout:g} s."
        return f"The model did not start answering within {self.settings.first_token_timeout:g} s."


class ChatStream(Response):
    """`POST /api/chat/stream` once the body is valid: everything after validation."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chat: ChatRequest,
        upstream: Upstream,
        settings: Settings,
        caller: str,
        turn: ConversationTurn | None = None,
        on_end: Callable[[Usage], Awaitable[None]] | None = None,
        journal: Journal | None = None,
    ) -> None:
        """`on_end` gets the request's usage once, before the stream's last event (budget reconciliation).

        With a `journal` (a resumable answer) events carry ids and are kept for followers, and a
        client that leaves does not cancel the answer: it runs to its end, a stop or the deadline."""
        self.chat = chat
        self.turn = turn
        self.upstream = upstream
        self.settings = settings
        self.outcome = observability.StreamOutcome(caller=caller, model=settings.openai_model)
        self.background = None
        self.stream: OpenStream | None = None
        self.completion_estimate = 0
        self.on_end = on_end
        self.settling: asyncio.Future[None] | None = None
        self.journal = journal
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        if self.journal is not None:
            send = self._while_connected(send)
        relay = asyncio.ensure_future(self._respond(scope, send, started))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((relay, listener), return_when=asyncio.FIRST_COMPLETED)
            if self.journal is not None and not relay.done():
                self.client_gone = self.outcome.client_disconnected = True
                await relay  # kept for followers: the answer runs on without its first client
        finally:
            if not relay.done():
                relay.cancel()
                self.outcome.client_disconnected = True
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            await self._settle()
            if self.turn is not None:  # a no-op when the relay already stored the answer
                status = "disconnected" if self.outcome.client_disconnected else "error"
                await self.turn.finish(status, self.outcome.usage)
            self.outcome.duration_seconds = time.perf_counter() - started
            observability.record(self.outcome)

    def _while_connected(self, send: Send) -> Send:
        """`send`, silenced once the client has gone (a resumable answer runs on without it)."""

        async def sender(message: Message) -> None:
            if self.client_gone:
                return
            try:
                await send(message)
            except OSError:
                self.client_gone = True

        return sender

    async def _settle(self) -> None:
        """Once per request, before its last event or error body: fix its usage and hand it to `on_end`,
        so a client that reads the end and then asks for its usage sees the counters reconciled."""
        if self.settling is None:
            self.outcome.usage = self.usage()
            if self.on_end is None:  # nothing to count: settled, without a task
                self.settling = asyncio.get_running_loop().create_future()
                self.settling.set_result(None)
            else:
                self.settling = asyncio.ensure_future(self.on_end(self.outcome.usage))
        # Shielded: a client leaving mid-write must not cancel the reconciliation and leave the reservation charged.
        await asyncio.shield(self.settling)

    def usage(self) -> Usage:
        """The tokens this request used: as the upstream reported them, else estimated from what was relayed."""
        if self.stream is None:
            return NO_USAGE  # the upstream refused, or never answered: nothing was generated
        if self.stream.usage is not None:
            return self.stream.usage
        prompt = estimate_messages(self.chat.openai_messages())
        return Usage(prompt, self.completion_estimate, "estimated")

    @staticmethod
    def _remaining_seconds(scope: Scope) -> float | None:
        """Seconds left in this Lambda invocation, if it is one."""
        context = scope.get("aws.context")
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return None
        milliseconds: float = remaining()
        return milliseconds / 1000

    async def _open(self, until: float) -> OpenStream:
        try:
            async with asyncio.timeout_at(until):
                return await self.upstream.open(self.chat)
        except TimeoutError:
            raise UpstreamError(504, "The model did not answer in time.", "timeout") from None

    async def _respond(self, scope: Scope, send: Send, started: float) -> None:
        """Open the upstream; for a stored conversation, lock it and store the user's turn meanwhile.

        Nothing is sent before both have succeeded: a 409 (or any store failure) cancels the
        upstream request before a byte of the answer exists, and no token is relayed or stored
        before the user's turn is durable."""
        loop = asyncio.get_running_loop()
        remaining = self._remaining_seconds(scope)
        deadline = None if remaining is None else loop.time() + remaining - self.settings.deadline_margin_seconds
        limit = loop.time() + self.settings.first_token_timeout
        trailers = stream_trailers.EXTENSION in scope.get("extensions", {})
        opening = asyncio.ensure_future(self._open(limit if deadline is None else min(limit, deadline)))
        stop: asyncio.Future[None] | None = None
        try:
            if self.turn is not None:
                try:
                    await self.turn.begin(remaining)
                except StoreError as error:
                    await _discard(opening)
                    await self._send_json(send, _store_status(error), str(error))
                    return
                stop = asyncio.ensure_future(self.turn.wait_for_stop())
                await asyncio.wait((opening, stop), return_when=asyncio.FIRST_COMPLETED)
                if not opening.done():  # stopped before the model answered
                    await _discard(opening)
                    await self._start_stream(send, trailers)
                    await self._end(send, "stopped", STOPPED, "stopped", trailers)
                    return
            try:
                stream = self.stream = await opening
            except UpstreamError as error:
                if self.turn is not None:
                    await self._settle()
                    await self.turn.finish("timeout" if error.kind == "timeout" else "error", self.outcome.usage)
                await self._fail(send, error)
                return
            try:
                watchdog = _Watchdog(self.settings, limit, deadline, send)
                await self._relay(stream, send, watchdog, started, trailers, stop)
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        finally:
            if stop is not None:
                stop.cancel()
            await _discard(opening)
            if self.journal is not None:
                await self.journal.abandon()

    async def _send_json(
        self, send: Send, status: int, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.outcome.status = status
        await self._settle()
        headers = [(b"content-type", b"application/json"), *extra]
        if self.turn is not None:
            headers.append(self.turn.header)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json_body({"error": message})})

    async def _fail(self, send: Send, error: UpstreamError) -> None:
        self.outcome.error_kind = error.kind
        headers = []
        if error.retry_after:
            headers.append((b"retry-after", error.retry_after.encode("latin-1", "replace")))
        await self._send_json(send, error.status, error.message, headers)

    async def _start_stream(self, send: Send, trailers: bool) -> None:
        self.outcome.status = 200
        headers = SSE_HEADERS if self.turn is None else [*SSE_HEADERS, self.turn.header]
        await send({"type": "http.response.start", "status": 200, "headers": headers, "trailers": trailers})
        if self.journal is not None:
            self.journal.start()

    async def _relay(
        self,
        stream: OpenStream,
        send: Send,
        watchdog: _Watchdog,
        started: float,
        trailers: bool,
        stop: asyncio.Future[None] | None,
    ) -> None:
        """Relay deltas as SSE; with the ASGI trailers extension (the Lambda runtime), report a failure there too."""
        await self._start_stream(send, trailers)
        loop = watchdog.loop
        turn = self.turn
        failure_message = ""
        status = "complete"
        try:
            async with asyncio.timeout(None) as timeout:
                timer = asyncio.ensure_future(watchdog.run(timeout))

                def stopped(_: object) -> None:
                    watchdog.interrupt(timeout, "stopped", STOPPED)

                if stop is not None:
                    stop.add_done_callback(stopped)
                try:
                    async with contextlib.aclosing(stream.contents()) as reads:
                        async for contents in reads:
                            watchdog.last_in = loop.time()
                            if not contents:
                                continue
                            if not watchdog.got_first:
                                watchdog.got_first = True
                                self.outcome.first_token_seconds = time.perf_counter() - started
                            self.outcome.events += len(contents)
                            for content in contents:
                                self.completion_estimate += estimate_text(content)
                            if turn is not None:
                                turn.add(contents)
                            if self.journal is not None:
                                body = self.journal.messages(contents)
                            elif len(contents) == 1:
                                body = sse.message(contents[0])
                            else:
                                body = b"".join(map(sse.message, contents))
                            watchdog.sending = True
                            await send({"type": "http.response.body", "body": body, "more_body": True})
                            watchdog.sending = False
                            watchdog.last_out = loop.time()
                finally:
                    timer.cancel()
                    if stop is not None:
                        stop.remove_done_callback(stopped)
        except TimeoutError:
            status = watchdog.kind
            self.outcome.error_kind = "stopped" if status == "stopped" else "timeout"
            failure_message = watchdog.reason
        except StreamFailed as failure:
            status = "error"
            self.outcome.error_kind = failure.kind
            failure_message = failure.message
        with contextlib.suppress(Exception):
            await stream.aclose()  # before the store write: a stopped model stops generating at once
        await self._end(send, status, failure_message, self.outcome.error_kind, trailers)

    async def _end(self, send: Send, status: str, failure_message: str, kind: str | None, trailers: bool) -> None:
        """The stream's last event, after the answer is stored and the conversation released."""
        await self._settle()
        if self.turn is not None and not await self.turn.finish(status, self.outcome.usage) and kind is None:
            kind, failure_message = "store", "The answer could not be saved in the conversation."
        self.outcome.error_kind = kind
        if self.journal is not None:
            ending = await self.journal.end(kind, failure_message)
        else:
            ending = sse.DONE if kind is None else sse.error(failure_message)
        await send({"type": "http.response.body", "body": ending, "more_body": False})
        if trailers:
            fields = [] if kind is None else stream_trailers.error_trailers(kind, failure_message)
            await send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})


def _store_status(error: StoreError) -> int:
    if isinstance(error, StoreBusy):
        return 409
    if isinstance(error, ConversationNotFound):
        return 404
    return 503


async def _discard(opening: asyncio.Future[OpenStream]) -> None:
    """Cancel an upstream request nobody will read, or close the stream it already opened.

    `asyncio.wait` neither raises the request's own failure nor swallows a cancellation of the caller."""
    opening.cancel()
    await asyncio.wait((opening,))
    if not opening.cancelled() and opening.exception() is None:
        with contextlib.suppress(Exception):
            await opening.result().aclose()


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error in the contract's shape, `{"error": "..."}`."""
    return Response(json_body({"error": message}), status, headers, media_type="application/json")
