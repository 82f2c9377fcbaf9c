"""Run the ASGI app for one invocation and stream its response (mangum parses the event).

This replaces mangum's buffering HTTPCycle on the streaming path only:
- the prelude is held back until the first body bytes, so a failure before any
  output is still a clean status (500, or 504 at the deadline);
- `receive` hands over the request, then waits for "the client is gone" -- a
  failed write or the deadline -- and reports `http.disconnect`, which makes the
  app cancel its upstream request;
- apps may send ASGI trailers (`http.response.trailers` extension); a trailer
  pair `stream-error-type` / `stream-error-message` becomes Lambda's error
  trailers, so InvokeWithResponseStream callers learn of a failure the body
  already reported in-band.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from mangum.types import LambdaConfig, LambdaHandler
from starlette.types import ASGIApp, Message

from .response_stream import DELIMITER, ResponseStream

# End the stream this long before the deadline if the app has not: past the
# deadline Lambda cuts the connection and the caller gets a truncated body.
CUTOFF_SECONDS = 0.5
STREAM_ERROR_TYPE = "Function.StreamError"
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade", "trailer"})


def prelude(event: dict[str, Any], status: int, raw_headers: list[tuple[bytes, bytes]], config: LambdaConfig) -> bytes:
    """Status and headers as Function URL (v2.0 event) or REST API streaming expect them."""
    excluded = _HOP_BY_HOP.union(config["exclude_headers"])
    headers: dict[str, str] = {}
    multi_value: dict[str, list[str]] = {}
    cookies: list[str] = []
    for raw_name, raw_value in raw_headers:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        if name in excluded:
            continue
        if name == "set-cookie":
            cookies.append(value)
        else:
            multi_value.setdefault(name, []).append(value)
    for name, values in multi_value.items():
        headers[name] = ",".join(values)
    headers.setdefault("content-type", "application/octet-stream")
    metadata: dict[str, Any] = {"statusCode": status, "headers": headers, "cookies": cookies}
    if event.get("version") != "2.0":
        metadata["multiValueHeaders"] = {**multi_value, **({"set-cookie": cookies} if cookies else {})}
    return json.dumps(metadata, separators=(",", ":")).encode()


@dataclass
class _Exchange:
    """The state of one streamed ASGI exchange."""

    stream: ResponseStream
    event: dict[str, Any]
    config: LambdaConfig
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    prelude_sent: bool = False
    trailers_expected: bool = False
    complete: bool = False
    error_type: str | None = None
    error: dict[str, object] | None = None

    async def send_body(self, body: bytes, *, force: bool = False) -> None:
        if not self.prelude_sent:
            if not body and not force:
                return
            self.prelude_sent = True
            body = prelude(self.event, self.status, self.headers, self.config) + DELIMITER + body
        await self.stream.write(body)

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
            self.trailers_expected = bool(message.get("trailers", False))
        elif kind == "http.response.body":
            more = message.get("more_body", False)
            await self.send_body(message.get("body", b""), force=not more)
            self.complete = not more and not self.trailers_expected
        elif kind == "http.response.trailers":
            fields = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in message["headers"]}
            if "stream-error-type" in fields:
                self.error_type = STREAM_ERROR_TYPE
                self.error = {
                    "errorType": fields["stream-error-type"],
                    "errorMessage": fields.get("stream-error-message", ""),
                    "stackTrace": [],
                }
            self.complete = not message.get("more_trailers", False)


async def stream_response(
    app: ASGIApp, handler: LambdaHandler, stream: ResponseStream, *, config: LambdaConfig, remaining_seconds: float
) -> None:
    """Drive `app` for one request and write its response to `stream`; never raises for app failures."""
    scope = handler.scope
    scope["extensions"] = {**scope.get("extensions", {}), "http.response.trailers": {}}
    exchange = _Exchange(stream, scope["aws.event"], config)
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

    task = asyncio.ensure_future(app(scope, receive, exchange.send))
    done, _ = await asyncio.wait((task,), timeout=max(remaining_seconds - CUTOFF_SECONDS, 0))
    if not done:
        await _stop(task, stop)
        reason = "The function reached its time limit before the response was complete."
        await _end(exchange, 504, "Function.Timeout", reason)
        return
    failure = task.exception()
    if failure is not None:
        await _end(exchange, 500, "Function.Unhandled", f"{type(failure).__name__}: {failure}")
    elif not exchange.complete:
        await _end(exchange, 500, "Function.IncompleteResponse", "The app ended without completing its response.")
    else:
        await exchange.send_body(b"", force=True)
        await stream.finish(exchange.error_type, exchange.error)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Tell the app its client is gone (it cancels the upstream), then make sure it stops."""
    stop.set()
    done, _ = await asyncio.wait((task,), timeout=0.2)
    if not done:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _end(exchange: _Exchange, status: int, error_type: str, message: str) -> None:
    """Finish a response the app could not finish: a clean status if nothing was sent, else trailers."""
    stream = exchange.stream
    if not exchange.prelude_sent:
        exchange.status = status
        exchange.headers = [(b"content-type", b"text/plain; charset=utf-8")]
        phrase = "Gateway Timeout" if status == 504 else "Internal Server Error"
        await exchange.send_body(phrase.encode(), force=True)
    await stream.finish(error_type, {"errorType": error_type, "errorMessage": message, "stackTrace": []})
