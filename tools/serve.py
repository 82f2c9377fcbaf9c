"""`make run`: serve the API under uvicorn, with an offline demo model when no key is set.

With neither OPENAI_API_KEY nor OPENAI_API_KEY_SECRET_ID configured, a local
OpenAI-compatible endpoint (tests/harness/fake_openai.py) starts beside the app and the
real SDK path runs end to end against it. This script is a development tool: it
is not part of the Lambda package, so a deployed function can never fall back to
the demo model.
"""

from __future__ import annotations

import os
import sys

import uvicorn

from tests.harness.fake_openai import FakeOpenAI, demo_script

DEMO_KEY = "offline-demo"


def _banner(lines: list[str]) -> None:
    width = max(len(line) for line in lines) + 4
    print("=" * width, *(f"  {line}" for line in lines), "=" * width, sep="\n", file=sys.stderr, flush=True)


def main() -> None:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8080"))
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "chat-stream")  # as the template sets it
    demo: FakeOpenAI | None = None
    if not os.environ.get("OPENAI_API_KEY") and not os.environ.get("OPENAI_API_KEY_SECRET_ID"):
        demo = FakeOpenAI(default=demo_script).start()
        os.environ["OPENAI_API_KEY"] = DEMO_KEY
        os.environ["OPENAI_BASE_URL"] = demo.base_url
        _banner(
            [
                "OFFLINE DEMO MODEL: no OPENAI_API_KEY or OPENAI_API_KEY_SECRET_ID is set.",
                f"Answers come from a local fake model at {demo.base_url}, not from a real model.",
                "Set OPENAI_API_KEY (and OPENAI_BASE_URL for other providers) to use a real one.",
            ]
        )
    print(
        f"Chat in a browser: http://{host}:{port}/\n"
        f"Or try: curl -N -X POST http://{host}:{port}/api/chat/stream "
        "-H 'Content-Type: application/json' -d '{\"message\":\"hi\"}'",
        file=sys.stderr,
        flush=True,
    )
    try:
        uvicorn.run("chat.handler:app", host=host, port=port)
    finally:
        if demo is not None:
            demo.stop()


if __name__ == "__main__":
    main()
