"""The runtime's streaming path with apps that misbehave, in process: message order and the deadline.

The real `Runtime` (its dispatch, `stream_response`, `ResponseStream`) talks HTTP
to the Runtime API double, or to a peer that never reads, on 127.0.0.1; the apps
are small ASGI callables that do what the product app must never do.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from typing import Any

from mangum import Mangum
from starlette.types import Receive, Scope, Send

from chat.runtime.client import RuntimeClient
from chat.runtime.context import LambdaContext
from chat.runtime.loop import Runtime
from chat.runtime.response_stream import ResponseStream
from chat.runtime.settings import RuntimeSettings
from chat.runtime.streaming import stream_response
from tests.harness.lambda_events import function_url_event, split_streamed
from tests.harness.runtime_api_double import Result, RuntimeAPIDouble


def serve_one(app: Any, event: dict[str, Any]) -> Result:
    """One invocation of `app` through the runtime loop, Function URL streaming on."""
    with RuntimeAPIDouble() as double:

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            client = RuntimeClient(double.address)
            runtime = Runtime(client, Mangum(app, lifespan="off"), RuntimeSettings(function_url_streaming=True))
            runtime.handle(client.next_invocation())
            loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        result = double.invoke(event, wait=10)
        thread.join(10)
        return result


def test_a_body_before_the_start_is_an_app_failure_not_status_0() -> None:
    async def body_first(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.body", "body": b"oops", "more_body": False})

    result = serve_one(body_first, function_url_event({"message": "hi"}))
    prelude, body = split_streamed(result.body)
    assert prelude["statusCode"] == 500
    assert body == b"Internal Server Error"
    assert result.trailers["lambda-runtime-function-error-type"] == "Function.Unhandled"
    detail = json.loads(base64.b64decode(result.trailers["lambda-runtime-function-error-body"]))
    assert detail["errorMessage"] == "UnexpectedMessage: Unexpected http.response.body"


def test_a_second_start_ends_the_stream_with_error_trailers() -> None:
    async def two_starts(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.start", "status": 404, "headers": []})

    result = serve_one(two_starts, function_url_event({"message": "hi"}))
    prelude, body = split_streamed(result.body)
    assert (prelude["statusCode"], body) == (200, b"part")
    assert result.trailers["lambda-runtime-function-error-type"] == "Function.Unhandled"


def test_prelude_headers_are_mangums_function_url_shape() -> None:
    async def cookies(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"Set-Cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"x-many", b"1"), (b"x-many", b"2")]
        headers += [(b"content-length", b"2"), (b"connection", b"keep-alive")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    result = serve_one(cookies, function_url_event({"message": "hi"}))
    prelude, body = split_streamed(result.body)
    assert prelude == {
        "statusCode": 201,
        # hop-by-hop and content-length dropped; a content type supplied; duplicates comma-joined
        "headers": {"x-many": "1,2", "content-type": "application/octet-stream"},
        "cookies": ["a=1", "b=2"],
    }
    assert body == b"ok"
    assert result.trailers == {}


async def _against_a_peer_that_never_reads(remaining: float) -> tuple[float, ResponseStream]:
    """An app that streams 32 MB and then hangs, toward a Runtime API that neither reads nor answers."""
    held: list[asyncio.StreamWriter] = []
    forever = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await forever.wait()

    async def hangs(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"x" * (32 << 20), "more_body": True})
        await asyncio.sleep(3600)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    mangum = Mangum(hangs, lifespan="off")
    context = LambdaContext(
        aws_request_id="deadline-test", deadline_ms=int((time.time() + remaining) * 1000), invoked_function_arn=""
    )
    handler = mangum.infer(function_url_event({"message": "hi"}), context)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await ResponseStream.open(f"127.0.0.1:{port}", "deadline-test", started + remaining)
    await stream_response(hangs, handler, stream, config=mangum.config)
    elapsed = loop.time() - started
    forever.set()
    server.close()
    return elapsed, stream


def test_no_wait_outlasts_the_deadline() -> None:
    # Before the budget, the finish alone could wait 5 s for a peer that stopped reading.
    elapsed, stream = asyncio.run(_against_a_peer_that_never_reads(remaining=1.5))
    assert elapsed < 1.5 + 0.5
    assert stream.gone.is_set()
    assert not stream.accepted
