"""Server-Sent Events framing, byte-compatible with the Go reference (gin-contrib/sse).

The one deliberate difference: a payload line that starts with a space gets one
extra space after `data:`, because every standard SSE parser strips exactly one.
Without it, `" world"` would reach the client as `"world"`.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SURROGATE = re.compile("[\ud800-\udfff]")

DONE = b"event:message\ndata:[DONE]\n\n"
HEARTBEAT = b": keep-alive\n\n"


def without_lone_surrogates(text: str) -> str:
    """`text` with each lone surrogate (a JSON escape of half a UTF-16 pair) as U+FFFD: it cannot be UTF-8."""
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        return without_lone_surrogates(text).encode()


def _data_lines(payload: str) -> str:
    return "".join(
        f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n" for line in _LINE_BREAK.split(payload)
    )


def event(name: str, payload: str) -> bytes:
    """Frame one event: `event:<name>`, one `data:` line per payload line, a blank line."""
    if payload.startswith(" ") or "\n" in payload or "\r" in payload:
        return _utf8(f"event:{name}\n{_data_lines(payload)}\n")
    return _utf8(f"event:{name}\ndata:{payload}\n\n")


def message(payload: str) -> bytes:
    return event("message", payload)


def error(payload: str) -> bytes:
    return event("error", payload)
