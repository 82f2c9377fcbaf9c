"""A Lambda Runtime API double on 127.0.0.1, written to lambda-streaming-runtime.md.

AWS's emulator (RIE) proves the protocol is accepted but hands streamed bytes
to the invoker all at once; this double records when each chunk arrived, the
trailers, and can hang up mid-stream the way RIE does when its caller has gone.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.harness.threaded_server import ThreadedServer

PREFIX = "/2018-06-01"


@dataclass
class Result:
    """What the runtime sent back for one invocation."""

    request_id: str
    kind: str = ""  # "response", "stream" or "error"
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks: list[tuple[float, bytes]] = field(default_factory=list)
    trailers: dict[str, str] = field(default_factory=dict)
    finished: float = 0.0
    hung_up: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


@dataclass
class _Invocation:
    event: bytes
    headers: dict[str, str]
    result: Result
    hang_up_after_chunks: int | None


class RuntimeAPIDouble(ThreadedServer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.init_errors: list[tuple[dict[str, str], bytes]] = []
        self._results: dict[str, _Invocation] = {}
        self._queue: asyncio.Queue[_Invocation] = asyncio.Queue()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def invoke(
        self,
        event: object,
        *,
        deadline_in: float = 30.0,
        trace_id: str | None = None,
        hang_up_after_chunks: int | None = None,
        wait: float = 30.0,
    ) -> Result:
        """Queue one invocation for the runtime's `/next` and wait for its answer."""
        result = self.begin(
            event, deadline_in=deadline_in, trace_id=trace_id, hang_up_after_chunks=hang_up_after_chunks
        )
        if not result.done.wait(wait):
            raise TimeoutError(f"the runtime did not answer invocation {result.request_id}")
        return result

    def begin(
        self,
        event: object,
        *,
        deadline_in: float = 30.0,
        trace_id: str | None = None,
        hang_up_after_chunks: int | None = None,
    ) -> Result:
        """Queue one invocation and return at once; its `chunks` fill as they arrive, `done` is set at the end."""
        request_id = str(uuid.uuid4())
        headers = {
            "Lambda-Runtime-Aws-Request-Id": request_id,
            "Lambda-Runtime-Deadline-Ms": str(int((time.time() + deadline_in) * 1000)),
            "Lambda-Runtime-Invoked-Function-Arn": "arn:aws:lambda:eu-west-1:123456789012:function:chat:live",
        }
        if trace_id:
            headers["Lambda-Runtime-Trace-Id"] = trace_id
        invocation = _Invocation(json.dumps(event).encode(), headers, Result(request_id), hang_up_after_chunks)
        self._results[request_id] = invocation
        self.call_soon(self._queue.put_nowait, invocation)
        return invocation.result

    def wait_for_next(self, count: int, timeout: float = 10.0) -> None:
        """Wait until the runtime has asked for its `count`-th invocation."""
        deadline = time.monotonic() + timeout
        while self.calls.count("GET /runtime/invocation/next") < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the runtime did not call /next {count} times")
            time.sleep(0.01)

    # -- serving

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        line = await reader.readline()
        if not line:
            return False
        method, path, _ = line.decode("latin-1").split(" ", 2)
        headers = await _read_fields(reader)
        self.calls.append(f"{method} {path.removeprefix(PREFIX)}")
        route = path.removeprefix(PREFIX)
        if route == "/runtime/invocation/next":
            invocation = await self._queue.get()
            _respond(writer, 200, invocation.event, invocation.headers)
            return True
        if route == "/runtime/restore/next":
            _respond(writer, 200, b"")
            return True
        if route in ("/runtime/init/error", "/runtime/restore/error"):
            self.init_errors.append((headers, await _read_body(reader, headers)))
            _respond(writer, 202, b'{"status":"OK"}')
            return True
        request_id, _, kind = route.removeprefix("/runtime/invocation/").partition("/")
        invocation = self._results[request_id]
        result = invocation.result
        result.headers = headers
        if headers.get("transfer-encoding") == "chunked":
            result.kind = "stream"
            if not await self._read_chunks(reader, result, invocation.hang_up_after_chunks):
                _respond(writer, 400, b'{"errorMessage":"HTTP request detected as truncated"}')
                result.hung_up = True
                result.finished = time.monotonic()
                result.done.set()
                return False
        else:
            result.kind = kind
            result.body = await _read_body(reader, headers)
        result.finished = time.monotonic()
        _respond(writer, 202, b'{"status":"OK"}')
        result.done.set()
        return True

    async def _read_chunks(self, reader: asyncio.StreamReader, result: Result, hang_up_after: int | None) -> bool:
        """Read a chunked body with its trailers; False when told to hang up first."""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                result.trailers = await _read_fields(reader)
                return True
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            result.chunks.append((time.monotonic(), data))
            result.body += data
            if hang_up_after is not None and len(result.chunks) >= hang_up_after:
                return False


async def _read_fields(reader: asyncio.StreamReader) -> dict[str, str]:
    fields: dict[str, str] = {}
    while True:
        line = (await reader.readline()).decode("latin-1").strip()
        if not line:
            return fields
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    return await reader.readexactly(int(headers.get("content-length", "0")))


def _respond(writer: asyncio.StreamWriter, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", "Content-Type: application/json"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
