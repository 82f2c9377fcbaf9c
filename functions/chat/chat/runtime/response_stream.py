"""One streamed `/response`: chunked HTTP/1.1 toward the Runtime API, with backpressure.

Wire format (lambda-streaming-runtime.md §2): a JSON prelude, 8 NUL bytes, then
the body as it is produced, and optional error trailers at the end. Any write
that fails, or an answer that arrives before we finished, means the caller is
gone: the stream is marked `gone` and every later write is dropped. No wait on
this connection outlasts the invocation's deadline (see `streaming.py` for the
budget).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket

from .client import API_VERSION

DELIMITER = b"\0" * 8
ERROR_TYPE_TRAILER = "Lambda-Runtime-Function-Error-Type"
ERROR_BODY_TRAILER = "Lambda-Runtime-Function-Error-Body"
FINISH_SECONDS = 5.0  # at most, for the end of the body to leave, the Runtime API to answer and the close


class ResponseStream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float) -> None:
        self._reader = reader
        self._writer = writer
        self.deadline = deadline  # event-loop time of the invocation's deadline
        self.gone = asyncio.Event()
        # An answer before the body ended means the Runtime API stopped reading: the caller is gone.
        self._answer: asyncio.Task[bytes] = asyncio.ensure_future(reader.readline())
        self._answer.add_done_callback(lambda _: self.gone.set())
        self.status_line = b""

    @classmethod
    async def open(cls, address: str, request_id: str, deadline: float) -> ResponseStream:
        host, _, port = address.rpartition(":")
        async with asyncio.timeout_at(deadline):
            reader, writer = await asyncio.open_connection(host, int(port))
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer.write(
            (
                f"POST /{API_VERSION}/runtime/invocation/{request_id}/response HTTP/1.1\r\n"
                f"Host: {address}\r\n"
                "Lambda-Runtime-Function-Response-Mode: streaming\r\n"
                "Transfer-Encoding: chunked\r\n"
                "Content-Type: application/vnd.awslambda.http-integration-response\r\n"
                f"Trailer: {ERROR_TYPE_TRAILER}, {ERROR_BODY_TRAILER}\r\n"
                "\r\n"
            ).encode("latin-1")
        )
        return cls(reader, writer, deadline)

    async def write(self, data: bytes) -> None:
        """Send one chunk and wait until the transport has room again (at the latest until the deadline)."""
        if not data or self.gone.is_set():
            return
        try:
            self._writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            async with asyncio.timeout_at(self.deadline):
                await self._writer.drain()
        except (ConnectionError, OSError, TimeoutError):
            self.gone.set()

    async def finish(self, error_type: str | None, error: dict[str, object] | None) -> bytes:
        """End the body (with Lambda's error trailers when `error_type` is given); the Runtime API's status line.

        Every wait here ends within FINISH_SECONDS and by the deadline: a peer
        that stopped reading must not hold the invocation past it.
        """
        until = min(asyncio.get_running_loop().time() + FINISH_SECONDS, self.deadline)
        try:
            async with asyncio.timeout_at(until):
                if not self.gone.is_set():
                    trailers = b""
                    if error_type is not None:
                        encoded = base64.b64encode(json.dumps(error).encode())
                        trailers = b"%s: %s\r\n%s: %s\r\n" % (
                            ERROR_TYPE_TRAILER.encode(),
                            error_type.encode("latin-1", "replace"),
                            ERROR_BODY_TRAILER.encode(),
                            encoded,
                        )
                    self._writer.write(b"0\r\n" + trailers + b"\r\n")
                    await self._writer.drain()
                self.status_line = await self._answer
        except (ConnectionError, OSError, TimeoutError):
            self.gone.set()
        finally:
            self._answer.cancel()
            if self.gone.is_set():
                self._writer.transport.abort()  # unsent bytes would keep a graceful close waiting
            else:
                self._writer.close()
            with contextlib.suppress(ConnectionError, OSError, TimeoutError):
                async with asyncio.timeout_at(until):
                    await self._writer.wait_closed()
        return self.status_line

    @property
    def accepted(self) -> bool:
        return self.status_line.split(b" ", 2)[1:2] == [b"202"]
