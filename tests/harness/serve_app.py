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
from pathlib import Path
from typing import Any

PROBE_PATH = "/_harness/state"
SERVICE_APP = "chat.handler:app"
FUNCTION_DIR = Path(__file__).resolve().parents[2] / "functions" / "chat"


def _with_probe(app: Any) -> Any:
    """Wrap the app so GET PROBE_PATH answers with the pid and task count; all else passes through."""

    async def probed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == PROBE_PATH:
            body = json.dumps({"tasks": len(asyncio.all_tasks()), "pid": os.getpid()}).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return probed


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
        lifespan="off",
        log_level="debug" if args.debug_logs else "warning",
        access_log=args.debug_logs,
        backlog=4096,
        # uvicorn's 5 s keep-alive limit would race a client's reuse of idle connections between phases.
        timeout_keep_alive=600,
    )


if __name__ == "__main__":
    main()
