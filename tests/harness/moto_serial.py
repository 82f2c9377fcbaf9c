"""moto's server with requests handled one at a time: `python -m tests.harness.moto_serial --port PORT`.

moto's own server runs each request on a thread, and its DynamoDB backend is not safe
for that: under a few hundred concurrent writes it answers 500 or loses items. Real
DynamoDB serialises writes to an item itself; this stand-in serialises every request
(each is a fast in-memory operation), keeping keep-alive connections on their threads.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Iterable
from typing import Any


def serialised(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            return list(app(environ, start_response))

    return handle


def main() -> None:
    from moto.server import DomainDispatcherApplication, create_backend_app  # type: ignore[attr-defined]
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple("127.0.0.1", args.port, serialised(app), threaded=True)


if __name__ == "__main__":
    main()
