"""An OpenAI-compatible Chat Completions server on 127.0.0.1, scriptable byte by byte.

It serves three masters: the tests (scripted content, errors, stalls, resets,
truncations, and a record of when each client went away), the benchmarks (a fast
upstream that does not delay), and `make run` (the offline demo model, when no
key is configured). It speaks just enough HTTP/1.1, with keep-alive, to be a
real peer of the `openai` SDK, and runs on its own thread and event loop so sync
tests, async tests and other processes can all use it.

Scripts are chosen by the last user message: `server.script("key", [...])` makes
a request whose last message is `"key"` play those steps. Any other message gets
the default script, a deterministic answer streamed word by word.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tests.harness.threaded_server import ThreadedServer

# ---------------------------------------------------------------- script steps


@dataclass(frozen=True)
class Delta:
    """One `chat.completion.chunk` whose `choices[0].delta.content` is `content`."""

    content: str | None


@dataclass(frozen=True)
class Raw:
    """Bytes sent as they are, as one chunk of the streamed body."""

    data: bytes


@dataclass(frozen=True)
class UsageChunk:
    """The final usage chunk OpenAI sends when asked (`stream_options.include_usage`): empty `choices`."""

    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Hold:
    """Send nothing more until the test sets `release` (an answer held open at will)."""

    release: threading.Event


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Done:
    """`data: [DONE]`, the normal end marker."""


@dataclass(frozen=True)
class Reset:
    """Abort the TCP connection (RST) mid-stream."""


@dataclass(frozen=True)
class Truncate:
    """Close the connection without the chunked-encoding terminator."""


@dataclass(frozen=True)
class Stall:
    """Send nothing more until the client goes away."""


@dataclass(frozen=True)
class Reply:
    """A complete non-streamed answer, such as an error status; ends the script."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HeaderDelay:
    """Wait before sending the response headers (a slow or stalled upstream)."""

    seconds: float


Step = Delta | UsageChunk | Raw | Hold | Sleep | Done | Reset | Truncate | Stall | Reply | HeaderDelay


def openai_error(status: int, message: str, kind: str = "invalid_request_error") -> Reply:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return Reply(status, body.encode())


def chunk_json(content: str | None, *, role: str | None = None, finish: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return json.dumps(chunk).encode()


def usage_json(prompt_tokens: int, completion_tokens: int) -> bytes:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    chunk = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [],
        "usage": usage,
    }
    return json.dumps(chunk).encode()


def deltas(*contents: str | None, done: bool = True) -> list[Step]:
    steps: list[Step] = [Delta(content) for content in contents]
    if done:
        steps.append(Done())
    return steps


def demo_answer(message: str) -> list[str]:
    """The offline model's answer: deterministic, a few sentences, word by word."""
    text = (
        f'You said: "{message}". This is the offline demo model: no API key is configured, '
        "so a local OpenAI-compatible endpoint answers instead. Set OPENAI_API_KEY (and "
        "OPENAI_BASE_URL for other providers) to talk to a real model."
    )
    words = text.split(" ")
    return [words[0]] + [" " + word for word in words[1:]]


# ---------------------------------------------------------------- records


@dataclass
class RequestRecord:
    """What the server saw of one request, for assertions."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    started: float
    connection: int = 0
    client_closed: float | None = None
    finished: float | None = None
    closed_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def json(self) -> dict[str, object]:
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data

    @property
    def asks_usage(self) -> bool:
        try:
            options = self.json.get("stream_options")
        except ValueError:
            return False
        return isinstance(options, dict) and options.get("include_usage") is True

    @property
    def prompt_tokens(self) -> int:
        """What this fake model counts as the prompt's tokens: words, plus 4 per message and 3."""
        messages = self.json.get("messages")
        assert isinstance(messages, list)
        return 3 + sum(4 + len(str(message.get("content", "")).split()) for message in messages)

    @property
    def last_message(self) -> str:
        try:
            messages = self.json.get("messages")
        except ValueError:
            return ""
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            return str(messages[-1].get("content", ""))
        return ""


# ---------------------------------------------------------------- the server


class _ClientGone(Exception):
    pass


class FakeOpenAI(ThreadedServer):
    """The server. Use as a context manager, or `start()` / `stop()`."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Callable[[str], Sequence[Step]] | None = None,
        delay: float = 0.0,
        report_usage: bool = True,
    ) -> None:
        super().__init__(host, port)
        # Like OpenAI: a request asking for usage gets a usage chunk before `[DONE]`
        # (prompt_tokens as RequestRecord.prompt_tokens, one completion token per delta).
        # False plays an upstream that ignores the option.
        self.report_usage = report_usage
        self._default = default or (lambda message: deltas(*demo_answer(message)))
        self._delay = delay
        self._scripts: dict[str, Sequence[Step]] = {}
        self.api_keys: set[str] | None = None
        self.requests: list[RequestRecord] = []
        self.open_connections = 0
        self.connections_made = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def script(self, key: str, steps: Sequence[Step]) -> str:
        """Make requests whose last user message is `key` play `steps`; returns `key`."""
        self._scripts[key] = list(steps)
        return key

    def requests_for(self, key: str) -> list[RequestRecord]:
        return [record for record in self.requests if record.last_message == key]

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open_connections += 1
        self.connections_made += 1
        connection = self.connections_made
        carried = b""
        try:
            while True:
                keep_alive, carried = await self._one_request(reader, writer, carried, connection)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, _ClientGone):
            pass
        finally:
            self.open_connections -= 1
            with contextlib.suppress(Exception):
                writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, carried: bytes, connection: int
    ) -> tuple[bool, bytes]:
        """Serve one request; returns (keep the connection, bytes already read of the next)."""
        try:
            head = carried + await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False, b""
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        record = RequestRecord(method, path, headers, body, started=time.monotonic(), connection=connection)
        self.requests.append(record)
        watcher: asyncio.Future[bytes] = asyncio.ensure_future(self._watch_close(reader, record))
        try:
            steps = self._steps_for(record)
            keep_alive = await self._play(steps, writer, record)
        except (ConnectionError, _ClientGone):
            keep_alive = False
        finally:
            record.finished = time.monotonic()
            watcher.cancel()
        try:
            # Wait for the watcher to let go of the reader before the next request reads it.
            next_bytes = await watcher
        except asyncio.CancelledError:
            next_bytes = b""
        if not keep_alive:
            await self._wait_closed(reader, record)
        return keep_alive and record.client_closed is None, next_bytes

    def _steps_for(self, record: RequestRecord) -> Sequence[Step]:
        if record.method != "POST" or not record.path.endswith("/chat/completions"):
            return [openai_error(404, f"Unknown path {record.path}", "not_found")]
        supplied = record.headers.get("authorization", "").removeprefix("Bearer ")
        if self.api_keys is not None and supplied not in self.api_keys:
            # OpenAI's real wording, which quotes a masked part of the key.
            masked = f"{supplied[:8]}{'*' * 16}{supplied[-4:]}"
            return [
                openai_error(
                    401,
                    f"Incorrect API key provided: {masked}. You can find your API key at "
                    "https://platform.openai.com/account/api-keys.",
                    "invalid_request_error",
                )
            ]
        message = record.last_message
        steps = self._scripts.get(message) or self._default(message)
        if not (self.report_usage and record.asks_usage) or any(isinstance(step, UsageChunk) for step in steps):
            return steps
        usage = UsageChunk(record.prompt_tokens, sum(1 for step in steps if isinstance(step, Delta) and step.content))
        return [part for step in steps for part in ((usage, step) if isinstance(step, Done) else (step,))]

    async def _watch_close(self, reader: asyncio.StreamReader, record: RequestRecord) -> bytes:
        """Notice the client closing while we answer.

        A client that got the whole answer may already be sending its next request on
        this connection: that byte is handed back to the caller, not lost.
        """
        try:
            data = await reader.read(1)
        except ConnectionError:
            data = b""
        if not data:
            self._mark_closed(record)
        return data

    async def _wait_closed(self, reader: asyncio.StreamReader, record: RequestRecord) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.read(1), 30)
        self._mark_closed(record)

    @staticmethod
    def _mark_closed(record: RequestRecord) -> None:
        if record.client_closed is None:
            record.client_closed = time.monotonic()
            record.closed_event.set()

    async def _play(self, steps: Sequence[Step], writer: asyncio.StreamWriter, record: RequestRecord) -> bool:
        """Play a script; returns whether the connection may be reused."""
        started = False
        for step in steps:
            if record.client_closed is not None:
                raise _ClientGone
            if isinstance(step, HeaderDelay):
                await self._sleep(step.seconds, record)
            elif isinstance(step, Reply):
                extra = "".join(f"{k}: {v}\r\n" for k, v in step.headers)
                writer.write(
                    f"HTTP/1.1 {step.status} X\r\ncontent-type: {step.content_type}\r\n"
                    f"content-length: {len(step.body)}\r\n{extra}\r\n".encode()
                    + step.body
                )
                await writer.drain()
                return True
            elif isinstance(step, Reset):
                transport = writer.transport
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
                return False
            elif isinstance(step, Truncate):
                writer.close()
                return False
            elif isinstance(step, Stall):
                await record_closed(record)
                return False
            elif isinstance(step, Sleep):
                await self._sleep(step.seconds, record)
            elif isinstance(step, Hold):
                while not step.release.is_set():
                    await self._sleep(0.01, record)
            else:
                if not started:
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                        b"transfer-encoding: chunked\r\ncache-control: no-cache\r\n\r\n"
                    )
                    started = True
                if isinstance(step, Delta):
                    payload = b"data: " + chunk_json(step.content) + b"\n\n"
                elif isinstance(step, UsageChunk):
                    payload = b"data: " + usage_json(step.prompt_tokens, step.completion_tokens) + b"\n\n"
                elif isinstance(step, Done):
                    payload = b"data: [DONE]\n\n"
                else:
                    payload = step.data
                writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                await writer.drain()
                if self._delay:
                    await self._sleep(self._delay, record)
        if not started:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    @staticmethod
    async def _sleep(seconds: float, record: RequestRecord) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if record.client_closed is not None:
                raise _ClientGone
            await asyncio.sleep(min(0.01, max(0.0, deadline - time.monotonic())))


async def record_closed(record: RequestRecord) -> None:
    while record.client_closed is None:
        await asyncio.sleep(0.01)
    raise _ClientGone


def demo_script(message: str) -> list[Step]:
    """The offline demo model: a pause like a real model's, then words at reading pace."""
    steps: list[Step] = [Sleep(0.2)]
    for word in demo_answer(message):
        steps += [Delta(word), Sleep(0.04)]
    steps.append(Done())
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with FakeOpenAI(host=args.host, port=args.port, default=demo_script) as server:
        print(f"serving {server.base_url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
