"""A TCP proxy on 127.0.0.1 that drops one streaming answer mid-way: a network that fails under a live stream.

Browsers' offline emulation fails new requests but leaves an established response
streaming, so it cannot cut an answer in progress. This proxy forwards everything to the
app and, once armed, aborts the connection carrying the next `POST /api/chat/stream` as
soon as the response has carried `cut_at` (bytes) to the client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

CHAT_STREAM = b"POST /api/chat/stream"


class CuttingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_at: bytes | None = None
        self.cuts = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cutting-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def arm(self, cut_at: bytes) -> None:
        """Cut the next chat stream once its response has shown `cut_at`."""
        self.cut_at = cut_at

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        app_in, app_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        watching = asyncio.Event()

        async def upstream() -> None:
            while data := await client_in.read(65536):
                if self.cut_at is not None and CHAT_STREAM in data:
                    watching.set()
                app_out.write(data)
                await app_out.drain()

        async def downstream() -> None:
            seen = b""
            while data := await app_in.read(65536):
                client_out.write(data)
                await client_out.drain()
                if watching.is_set() and self.cut_at is not None:
                    seen += data
                    if self.cut_at in seen:
                        self.cut_at = None
                        self.cuts += 1
                        return  # the network drops: both sides are aborted below

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for writer in (client_out, app_out):
            with suppress(Exception):
                writer.transport.abort()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextmanager
def cutting_proxy(target_port: int) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(target_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
