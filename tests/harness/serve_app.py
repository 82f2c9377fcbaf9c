"""Serve an ASGI app under uvicorn with the harness's probe route: the process tests/harness/app_process.py starts.

    python -m tests.harness.serve_app --port PORT [--app chat.handler:app] [--debug-logs]

It imports nothing beyond the app, uvicorn and the standard library, so the
memory and CPU measured in this process are the app's.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

PROBE_PATH = "/_harness/state"
SERVICE_APP = "chat.handler:app"
FUNCTION_DIR = Path(__file__).resolve().parents[2] / "functions" / "chat"


def _with_probe(app: Any) -> Any:
    """Route GET PROBE_PATH to the probe, all else to the app.

    A plain function that returns the app's own coroutine, so no frame of ours stays
    alive under an open stream (the benchmark's memory per stream is the app's alone).
    """

    def probed(scope: dict[str, Any], receive: Any, send: Any) -> Awaitable[None]:
        if scope["type"] == "http" and scope["path"] == PROBE_PATH:
            return _probe(send)
        return app(scope, receive, send)  # type: ignore[no-any-return]

    return probed


async def _probe(send: Any) -> None:
    body = json.dumps({"tasks": len(asyncio.all_tasks()), "pid": os.getpid()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", default=SERVICE_APP, help="module:attribute of the ASGI app")
    parser.add_argument("--debug-logs", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(FUNCTION_DIR))
    module, _, attribute = args.app.partition(":")
    app = getattr(importlib.import_module(module), attribute)
    if args.debug_logs:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    uvicorn.run(
        _with_probe(app),
        host="127.0.0.1",
        port=args.port,
        interface="asgi3",  # `probed` is not a coroutine function, so uvicorn cannot tell by itself
        lifespan="off",
        log_level="debug" if args.debug_logs else "warning",
        access_log=args.debug_logs,
        backlog=4096,
        # uvicorn's 5 s keep-alive limit would race a client's reuse of idle connections between phases.
        timeout_keep_alive=600,
    )


if __name__ == "__main__":
    main()
