"""Helpers shared by the test suites: a real uvicorn server on 127.0.0.1, SSE decoding."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import uvicorn
from fastapi import FastAPI
from httpx_sse import EventSource

from chat.app import create_app
from chat.config import Settings
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.ports import free_port

TEST_KEY = "sk-test-FAKE-KEY-FOR-TESTS-ONLY-QX"  # obviously fake: never a real credential in the repository


def settings_for(fake: FakeOpenAI, **overrides: object) -> Settings:
    """Settings aimed at the fake upstream, with short limits so failure tests are quick."""
    values: dict[str, object] = {
        "openai_api_key": TEST_KEY,
        "openai_base_url": fake.base_url,
        "openai_model": "fake-model",
        "first_token_timeout": 3.0,
        "idle_timeout": 1.0,
        "heartbeat_seconds": 15.0,
        "store_url": "none",  # stateless unless a test gives it a store
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def unique(label: str = "script") -> str:
    """A message no other test uses, so scripts on a shared fake server never collide."""
    return f"{label}-{uuid.uuid4().hex[:12]}"


class AppServer:
    """`create_app(settings)` served by uvicorn on a thread, as a real HTTP peer."""

    def __init__(self, settings: Settings | None = None, *, app: FastAPI | None = None) -> None:
        self.app = app if app is not None else create_app(settings)
        self.port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", timeout_keep_alive=30
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="app-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> AppServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("app server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    raw: bytes
    events: list[tuple[str, str]]


def decode_sse(raw: bytes) -> list[tuple[str, str]]:
    """Decode bytes with httpx-sse, the way a standard client would."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=raw)
    return [(event.event, event.data) for event in EventSource(response).iter_sse()]


def post_stream(
    base_url: str, body: object | None = None, *, content: bytes | None = None, **kwargs: object
) -> StreamResult:
    """POST to the stream endpoint and read the whole answer."""
    with httpx.Client(timeout=30) as client:
        response = client.post(
            f"{base_url}/api/chat/stream",
            json=body if content is None else None,
            content=content,
            **kwargs,  # type: ignore[arg-type]
        )
    raw = response.content
    is_sse = response.headers.get("content-type", "").startswith("text/event-stream")
    return StreamResult(response.status_code, response.headers, raw, decode_sse(raw) if is_sse else [])


@contextlib.contextmanager
def app_server(settings: Settings) -> Iterator[AppServer]:
    with AppServer(settings) as server:
        yield server
