"""The OpenAI-compatible upstream: opening a streamed completion and reading its deltas.

The official SDK makes the request (auth, base URL, retries, error types), but the
stream is read raw: building a pydantic model per chunk is most of an idiomatic relay's CPU
cost, while the only field needed is `choices[0].delta.content`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .chat_request import ChatRequest
from .config import Settings
from .redact import redact
from .secrets import SecretSource, SecretUnavailable
from .sse import without_lone_surrogates
from .usage import Usage, reported

if TYPE_CHECKING:
    import httpx2
    from openai import AsyncOpenAI

# How long a finished answer's connection may take to end its body before it is closed instead of reused.
DRAIN_SECONDS = 0.05


class UpstreamError(Exception):
    """The upstream refused or failed before streaming: becomes a JSON error response."""

    def __init__(self, status: int, message: str, kind: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


class StreamFailed(Exception):
    """The upstream failed after the stream started: becomes an `event:error`."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


class DeltaParser:
    """Incremental SSE decoder for the upstream body, yielding delta contents.

    It follows the SSE field rules (one optional space after the colon, `\\r\\n`,
    `\\r` or `\\n` line ends, multi-line data joined by `\\n`) so any
    OpenAI-compatible server works, not only OpenAI's own formatting. A chunk's
    `usage` object (the final chunk, with empty `choices`, when usage was asked
    for) is kept in `usage`; it yields no content.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event = b""
        self.done = False
        self.usage: Usage | None = None

    def feed(self, chunk: bytes) -> list[str]:
        """Consume bytes; return the non-empty contents completed by them, in order."""
        buffer = self._pending + chunk if self._pending else chunk
        lines = buffer.splitlines(keepends=True)
        if lines and not lines[-1].endswith(b"\n"):
            # Incomplete, or a `\r` whose `\n` may come in the next read.
            self._pending = lines.pop()
        else:
            self._pending = b""
        contents: list[str] = []
        for raw in lines:
            line = raw.rstrip(b"\r\n")
            if not line:
                self._dispatch(contents)
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
            if self.done:
                break
        return contents

    def finish(self) -> list[str]:
        """The body ended: dispatch an event left without its blank line."""
        contents = self.feed(b"\n") if self._pending else []
        if self._data and not self.done:
            self._dispatch(contents)
        return contents

    def _dispatch(self, contents: list[str]) -> None:
        if not self._data:
            self._event = b""
            return
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event, self._data, self._event = self._event, [], b""
        if data == b"[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            if event == b"error":
                raise StreamFailed(
                    f"The model reported an error: {data.decode(errors='replace')}", "stream_error"
                ) from None
            raise StreamFailed("The model sent data that is not valid JSON.", "bad_stream") from None
        if not isinstance(chunk, dict):
            raise StreamFailed("The model sent an unexpected stream item.", "bad_stream")
        error = chunk.get("error")
        if error is not None or event == b"error":
            raise StreamFailed(f"The model reported an error: {_error_text(error or chunk)}", "stream_error")
        content = _delta_content(chunk)
        if content:
            contents.append(content)
        usage = chunk.get("usage")
        if usage is not None:  # OpenAI sends `"usage": null` on every other chunk; some servers a running total
            self.usage = reported(usage) or self.usage


def _delta_content(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices")
    if not choices or not isinstance(choices, list):
        return None
    first = choices[0]
    delta = first.get("delta") if isinstance(first, dict) else None
    content = delta.get("content") if isinstance(delta, dict) else None
    # Replaced here, not only when framed: the stored answer and a resumable answer's events are UTF-8 too.
    return without_lone_surrogates(content) if isinstance(content, str) else None


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        message = error.get("message")
        if isinstance(message, str) and message:
            return message
        return json.dumps(error)[:500]
    return str(error)[:500]


@dataclass
class OpenStream:
    """A streamed completion whose headers arrived; iterate `contents()`, then `aclose()`."""

    response: httpx2.Response
    secrets: tuple[str, ...]
    parser: DeltaParser = field(default_factory=DeltaParser)
    body: AsyncIterator[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.body = self.response.aiter_bytes()  # one iterator: `aclose` reads the rest of the same body

    @property
    def usage(self) -> Usage | None:
        """What the upstream reported in its final usage chunk, if it sent one (so far)."""
        return self.parser.usage

    async def contents(self) -> AsyncGenerator[list[str], None]:
        """Per network read, the delta contents it completed (often one, sometimes several)."""
        import httpx2

        parser = self.parser
        try:
            async for chunk in self.body:
                found = parser.feed(chunk)
                yield found
                if parser.done:
                    return
            yield parser.finish()
        except httpx2.TimeoutException:
            raise StreamFailed("The model stopped sending data (read timeout).", "timeout") from None
        except httpx2.HTTPError as error:
            raise StreamFailed(_connection_lost(error), "connection") from None
        except StreamFailed as failure:
            raise StreamFailed(redact(failure.message, self.secrets), failure.kind) from None

    async def aclose(self) -> None:
        """Close the response. After `[DONE]`, first read the rest of the body (normally just the end
        of its chunked encoding, already received), so the connection goes back to the pool: an
        answer that ends there costs the next request no new connection (no TLS handshake)."""
        if self.parser.done and not self.response.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DRAIN_SECONDS):
                    async for _ in self.body:
                        pass
        await self.response.aclose()


def _connection_lost(error: Exception) -> str:
    name = type(error).__name__
    if name == "RemoteProtocolError":
        return "The connection to the model ended before the answer was complete."
    return "The connection to the model was lost."


class Upstream:
    """Opens streamed completions; one AsyncOpenAI client per event loop, created lazily."""

    def __init__(self, settings: Settings, api_key: SecretSource) -> None:
        self._settings = settings
        self._api_key = api_key
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncOpenAI] = weakref.WeakKeyDictionary()

    def secrets(self) -> tuple[str, ...]:
        return self._api_key.known_values()

    def reset(self) -> None:
        """Forget clients (after a SnapStart restore: their connections are stale)."""
        self._clients.clear()

    async def open(self, chat: ChatRequest) -> OpenStream:
        """Start the completion; raise UpstreamError if the upstream refuses or is unreachable."""
        import openai

        if not self._api_key.configured:
            raise UpstreamError(
                500,
                "No OpenAI API key is configured: set OPENAI_API_KEY or OPENAI_API_KEY_SECRET_ID.",
                "no_key",
            )
        try:
            key = await self._api_key.get()
            try:
                return await self._create(key, chat)
            except openai.AuthenticationError:
                if not self._api_key.rotatable:
                    raise
                fresh = await self._api_key.get(refresh=True)
                if fresh == key:
                    raise
                return await self._create(fresh, chat)
        except SecretUnavailable as error:
            raise UpstreamError(503, str(error), "secret") from None
        except openai.APIStatusError as error:
            raise self._status_error(error) from None
        except openai.APITimeoutError:
            raise UpstreamError(504, "The model did not answer in time.", "timeout") from None
        except openai.APIConnectionError:
            raise UpstreamError(502, "The model's server could not be reached.", "unreachable") from None

    async def _create(self, key: str, chat: ChatRequest) -> OpenStream:
        """POST the completion through the SDK's generic `post`: same auth, base URL, retries and
        error types as `chat.completions.create`, without re-validating a body built from checked
        input (that transform was a third of the SDK's per-request CPU)."""
        import httpx2

        body: dict[str, Any] = {
            "model": self._settings.openai_model,
            "messages": chat.openai_messages(),
            "stream": True,
        }
        if self._settings.openai_max_tokens is not None:
            body["max_tokens"] = self._settings.openai_max_tokens
        if self._settings.openai_stream_usage:
            body["stream_options"] = {"include_usage": True}
        response = await self._client(key).post("/chat/completions", cast_to=httpx2.Response, body=body, stream=True)
        return OpenStream(response=response, secrets=self.secrets())

    def _client(self, key: str) -> AsyncOpenAI:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._new_client(key)
        elif client.api_key != key:
            client = client.with_options(api_key=key)
        self._clients[loop] = client
        return client

    def _new_client(self, key: str) -> AsyncOpenAI:
        import httpx2
        from openai import AsyncOpenAI

        settings = self._settings
        read = max(settings.first_token_timeout, settings.idle_timeout) + 5.0
        return AsyncOpenAI(
            api_key=key,
            base_url=settings.openai_base_url or None,
            max_retries=settings.openai_max_retries,
            timeout=httpx2.Timeout(read, connect=settings.connect_timeout),
        )

    def _status_error(self, error: Any) -> UpstreamError:
        status: int = error.status_code
        detail = redact(_error_text(error.body) if error.body is not None else "", self.secrets())
        if status == 429:
            retry_after = error.response.headers.get("retry-after")
            message = "The model is rate limited; try again later."
            return UpstreamError(429, _with_detail(message, detail), "rate_limited", retry_after)
        if status in (401, 403):
            return UpstreamError(502, _with_detail("The model rejected the service's credentials.", detail), "auth")
        if status >= 500:
            return UpstreamError(502, f"The model's server failed (HTTP {status}).", "server_error")
        return UpstreamError(502, _with_detail(f"The model refused the request (HTTP {status}).", detail), "refused")


def _with_detail(message: str, detail: str) -> str:
    return f"{message} Upstream said: {detail}" if detail and not detail.lstrip().startswith("<") else message
