"""The harness's client side: one HTTP client shape, and a chat request read as a standard SSE client would."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from httpx_sse import EventSource

STREAM_PATH = "/api/chat/stream"


class PerfError(RuntimeError):
    """The harness could not take a measurement (a process failed, an answer was wrong)."""


def http_client() -> httpx.AsyncClient:
    """No pool limits (a run opens a thousand streams at once), and timeouts only a hung run would reach."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0))


@dataclass
class Seen:
    """What one client saw: the status, JSON error or SSE events, and when the first event came."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    first_event: float | None = None
    failure: str | None = None

    @property
    def messages(self) -> list[str]:
        return [data for event, data in self.events if event == "message"]

    def describe(self) -> str:
        if self.failure:
            return self.failure
        if self.error is not None:
            retry = f", Retry-After {self.headers['retry-after']}" if "retry-after" in self.headers else ""
            return f"{self.status} JSON{retry}: {self.error[:60]}"
        last = self.events[-1] if self.events else ("", "")
        return f"{self.status}, {len(self.events)} events, last {last[0]}:{last[1][:60]}"


async def post(
    client: httpx.AsyncClient, base_url: str, message: str, fields: Mapping[str, object] | None = None
) -> Seen:
    """POST one chat message (with more body `fields`) and read the whole answer, as a standard SSE client would."""
    seen = Seen()
    started = time.perf_counter()
    payload = {"message": message, **(fields or {})}
    try:
        async with client.stream("POST", f"{base_url}{STREAM_PATH}", json=payload) as response:
            seen.status = response.status_code
            seen.headers = dict(response.headers)
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                body = await response.aread()
                try:
                    seen.error = json.loads(body)["error"]
                except (ValueError, KeyError, TypeError):
                    seen.failure = f"{seen.status} non-JSON body {body[:60]!r}"
                return seen
            async for event in EventSource(response).aiter_sse():
                if seen.first_event is None:
                    seen.first_event = time.perf_counter() - started
                seen.events.append((event.event, event.data))
    except httpx.HTTPError as error:
        seen.failure = f"{type(error).__name__}: {error}"
    return seen


async def ask(base_url: str, message: str) -> Seen:
    """One message on a client of its own."""
    async with http_client() as client:
        return await post(client, base_url, message)
