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

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import observability, sse, stream_trailers
from .chat_request import ChatRequest
from .config import Settings
from .upstream import OpenStream, StreamFailed, Upstream, UpstreamError
from .usage import NO_USAGE, Usage, estimate_messages, estimate_text

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

    async def run(self, timeout: asyncio.Timeout) -> None:
        settings = self.settings
        while True:
            now = self.loop.time()
            due = self.last_in + settings.idle_timeout if self.got_first else self.first_token_due
            if self.deadline is not None and self.deadline < due:
                due = self.deadline
            if now >= due:
                self.reason = self._reason(now)
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

    def _reason(self, now: float) -> str:
        if self.deadline is not None and now >= self.deadline:
            return "The response time limit was reached; the answer is incomplete."
        if self.got_first:
            return f"The model stopped sending data for {self.settings.idle_timeout:g} s."
        return f"The model did not start answering within {self.settings.first_token_timeout:g} s."


class ChatStream(Response):
    """`POST /api/chat/stream` once the body is valid: everything after validation."""

    media_type = "text/event-stream"

    def __init__(self, chat: ChatRequest, upstream: Upstream, settings: Settings, caller: str) -> None:
        self.chat = chat
        self.upstream = upstream
        self.settings = settings
        self.outcome = observability.StreamOutcome(caller=caller, model=settings.openai_model)
        self.background = None
        self.stream: OpenStream | None = None
        self.completion_estimate = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        relay = asyncio.ensure_future(self._respond(scope, send, started))
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((relay, listener), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                relay.cancel()
                self.outcome.client_disconnected = True
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
            self.outcome.duration_seconds = time.perf_counter() - started
            self.outcome.usage = self.usage()
            observability.record(self.outcome)

    def usage(self) -> Usage:
        """The tokens this request used: as the upstream reported them, else estimated from what was relayed."""
        if self.stream is None:
            return NO_USAGE  # the upstream refused, or never answered: nothing was generated
        if self.stream.usage is not None:
            return self.stream.usage
        prompt = estimate_messages(self.chat.openai_messages())
        return Usage(prompt, self.completion_estimate, "estimated")

    def _deadline(self, scope: Scope) -> float | None:
        """Loop time at which to end the stream: shortly before the Lambda deadline, if any."""
        context = scope.get("aws.context")
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        if remaining is None:
            return None
        milliseconds: float = remaining()
        return asyncio.get_running_loop().time() + milliseconds / 1000 - self.settings.deadline_margin_seconds

    async def _respond(self, scope: Scope, send: Send, started: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = self._deadline(scope)
        limit = loop.time() + self.settings.first_token_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                stream = self.stream = await self.upstream.open(self.chat)
        except TimeoutError:
            await self._fail(send, UpstreamError(504, "The model did not answer in time.", "timeout"))
            return
        except UpstreamError as error:
            await self._fail(send, error)
            return
        try:
            trailers = stream_trailers.EXTENSION in scope.get("extensions", {})
            await self._relay(stream, send, _Watchdog(self.settings, limit, deadline, send), started, trailers)
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _fail(self, send: Send, error: UpstreamError) -> None:
        self.outcome.status = error.status
        self.outcome.error_kind = error.kind
        headers = [(b"content-type", b"application/json")]
        if error.retry_after:
            headers.append((b"retry-after", error.retry_after.encode("latin-1", "replace")))
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": json_body({"error": error.message})})

    async def _relay(self, stream: OpenStream, send: Send, watchdog: _Watchdog, started: float, trailers: bool) -> None:
        """Relay deltas as SSE; with the ASGI trailers extension (the Lambda runtime), report a failure there too."""
        self.outcome.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS, "trailers": trailers})
        loop = watchdog.loop
        failure_message = ""
        try:
            async with asyncio.timeout(None) as timeout:
                timer = asyncio.ensure_future(watchdog.run(timeout))
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
                            body = (
                                sse.message(contents[0]) if len(contents) == 1 else b"".join(map(sse.message, contents))
                            )
                            watchdog.sending = True
                            await send({"type": "http.response.body", "body": body, "more_body": True})
                            watchdog.sending = False
                            watchdog.last_out = loop.time()
                finally:
                    timer.cancel()
        except TimeoutError:
            self.outcome.error_kind = "timeout"
            failure_message = watchdog.reason
        except StreamFailed as failure:
            self.outcome.error_kind = failure.kind
            failure_message = failure.message
        kind = self.outcome.error_kind
        ending = sse.DONE if kind is None else sse.error(failure_message)
        await send({"type": "http.response.body", "body": ending, "more_body": False})
        if trailers:
            fields = [] if kind is None else stream_trailers.error_trailers(kind, failure_message)
            await send({"type": "http.response.trailers", "headers": fields, "more_trailers": False})


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone away."""
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """A JSON error in the contract's shape, `{"error": "..."}`."""
    return Response(json_body({"error": message}), status, headers, media_type="application/json")
