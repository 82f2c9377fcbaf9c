"""Run the ASGI app for one invocation and stream its response (mangum parses the event).

This replaces mangum's buffering HTTPCycle on the streaming path only:
- the ASGI messages must come in HTTPCycle's order (start, body..., then the
  trailers if announced); anything else is mangum's `UnexpectedMessage`, raised
  into the app, and ends the invocation as an app failure;
- the prelude is held back until the first body bytes, so a failure before any
  output is still a clean status (500, or 504 at the deadline); its status and
  headers are what mangum's own handler makes of the response (cookies,
  comma-joined or multi-value headers, `exclude_headers`);
- `receive` hands over the request, then waits for "the client is gone" -- a
  failed write or the deadline -- and reports `http.disconnect`, which makes the
  app cancel its upstream request;
- a failure the app reports after its stream started arrives as the ASGI
  trailers of `chat.stream_trailers` and becomes Lambda's error trailers.

Deadline budget. The runtime owns the deadline D (`Lambda-Runtime-Deadline-Ms`,
as the context's remaining time); everything is measured back from it:
- D - CHAT_DEADLINE_MARGIN_SECONDS (the app, default 2 s): the relay ends its
  stream itself (`event:error`, error trailers). This is how an over-long
  answer normally ends, so the margin must exceed CUTOFF_SECONDS.
- D - CUTOFF_SECONDS (0.5 s): the runtime's backstop if the app has not ended.
  The app is told its client is gone and given STOP_SECONDS (0.2 s) before it
  is cancelled; the remaining 0.3 s end the response (a 504, or error trailers)
  and wait for the Runtime API's answer.
- D: no wait on the Runtime API connection outlasts it (`ResponseStream` bounds
  every drain, the finish and the close by its `deadline`, and the finish by
  FINISH_SECONDS as well), so a peer that stops reading cannot hold the
  invocation into Lambda's own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
from dataclasses import dataclass, field

from mangum.exceptions import UnexpectedMessage
from mangum.types import LambdaConfig, LambdaHandler
from starlette.types import ASGIApp, Message

from .. import stream_trailers
from .errors import lambda_error
from .response_stream import DELIMITER, ResponseStream

CUTOFF_SECONDS = 0.5
STOP_SECONDS = 0.2
PRELUDE_FIELDS = ("statusCode", "headers", "multiValueHeaders", "cookies")  # mangum's response, minus the body
STREAM_ERROR_TYPE = "Function.StreamError"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "trailer"})


def prelude(handler: LambdaHandler, status: int, raw_headers: list[tuple[bytes, bytes]], config: LambdaConfig) -> bytes:
    """Status and headers as mangum's handler shapes them for this event (Function URL or REST API)."""
    excluded = _HOP_BY_HOP.union(config["exclude_headers"])
    headers = [[name, value] for name, value in raw_headers if name.decode("latin-1").lower() not in excluded]
    if not any(name.lower() == b"content-type" for name, _ in headers):
        headers.append([b"content-type", b"application/octet-stream"])
    response = handler({"status": status, "headers": headers, "body": b""})
    metadata = {key: response[key] for key in PRELUDE_FIELDS if key in response}
    return json.dumps(metadata, separators=(",", ":")).encode()


class _State(enum.Enum):
    REQUEST = enum.auto()
    RESPONSE = enum.auto()
    TRAILERS = enum.auto()
    COMPLETE = enum.auto()


@dataclass
class _Exchange:
    """The state of one streamed ASGI exchange."""

    stream: ResponseStream
    handler: LambdaHandler
    config: LambdaConfig
    state: _State = _State.REQUEST
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    prelude_sent: bool = False
    trailers_expected: bool = False
    error: dict[str, object] | None = None

    async def send_body(self, body: bytes, *, force: bool = False) -> None:
        if not self.prelude_sent:
            if not body and not force:
                return
            body = prelude(self.handler, self.status, self.headers, self.config) + DELIMITER + body
            self.prelude_sent = True
        await self.stream.write(body)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if self.state is _State.REQUEST and kind == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self.trailers_expected = bool(message.get("trailers", False))
            self.state = _State.RESPONSE
        elif self.state is _State.RESPONSE and kind == "http.response.body":
            more = message.get("more_body", False)
            await self.send_body(message.get("body", b""), force=not more)
            if not more:
                self.state = _State.TRAILERS if self.trailers_expected else _State.COMPLETE
        elif self.state is _State.TRAILERS and kind == "http.response.trailers":
            reported = stream_trailers.read_error(message.get("headers", []))
            if reported is not None:
                self.error = lambda_error(*reported)
            if not message.get("more_trailers", False):
                self.state = _State.COMPLETE
        else:
            raise UnexpectedMessage(f"Unexpected {kind}")  # as mangum's HTTPCycle


async def stream_response(
    app: ASGIApp, handler: LambdaHandler, stream: ResponseStream, *, config: LambdaConfig
) -> None:
    """Drive `app` for one request and write its response to `stream`; never raises for app failures."""
    scope = handler.scope
    scope["extensions"] = {**scope.get("extensions", {}), stream_trailers.EXTENSION: {}}
    exchange = _Exchange(stream, handler, config)
    body = handler.body
    given = False
    stop = asyncio.Event()

    async def receive() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        waiters = [asyncio.ensure_future(stream.gone.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        return {"type": "http.disconnect"}

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(app(scope, receive, exchange.send))
    done, _ = await asyncio.wait((task,), timeout=max(stream.deadline - CUTOFF_SECONDS - loop.time(), 0))
    if not done:
        await _stop(task, stop, until=min(loop.time() + STOP_SECONDS, stream.deadline))
        reason = "The function reached its time limit before the response was complete."
        await _end(exchange, 504, "Function.Timeout", reason)
        return
    failure = task.exception()
    if failure is not None:
        await _end(exchange, 500, "Function.Unhandled", f"{type(failure).__name__}: {failure}")
    elif exchange.state is not _State.COMPLETE:
        await _end(exchange, 500, "Function.IncompleteResponse", "The app ended without completing its response.")
    else:
        await stream.finish(None if exchange.error is None else STREAM_ERROR_TYPE, exchange.error)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event, *, until: float) -> None:
    """Tell the app its client is gone (it cancels the upstream), then make sure it stops."""
    stop.set()
    done, _ = await asyncio.wait((task,), timeout=max(until - asyncio.get_running_loop().time(), 0))
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _end(exchange: _Exchange, status: int, error_type: str, message: str) -> None:
    """Finish a response the app could not finish: a clean status if nothing was sent, else trailers."""
    if not exchange.prelude_sent:
        exchange.status = status
        exchange.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        phrase = "Gateway Timeout" if status == 504 else "Internal Server Error"
        await exchange.send_body(phrase.encode(), force=True)
    await exchange.stream.finish(error_type, lambda_error(error_type, message))
