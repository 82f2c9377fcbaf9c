"""A canned HTTP answer on 127.0.0.1 for an AWS endpoint that cannot run here, every request recorded.

The smoke test's Function URL (reached through a proxy) and the load harness's
throttling Secrets Manager are each one of these.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class StandIn:
    """`with StandIn(status, content_type, body) as stand_in`: every POST gets that answer; `seen` records each."""

    def __init__(self, status: int, content_type: str, body: bytes, *, port: int = 0) -> None:
        self.status, self.content_type, self.body = status, content_type, body
        self.seen: list[tuple[str, dict[str, str], bytes]] = []  # (path, headers with lower-case names, body)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                stand_in.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(stand_in.status)
                self.send_header("content-type", stand_in.content_type)
                self.send_header("content-length", str(len(stand_in.body)))
                self.end_headers()
                self.wfile.write(stand_in.body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: callers read `seen`."""

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self._server.server_address[1]

    def __enter__(self) -> Self:
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
