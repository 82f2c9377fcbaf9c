"""The upstream delta parser against httpx-sse: the same bytes, cut anywhere, give the same deltas.

httpx-sse is an independent SSE decoder (WHATWG rules); the property builds
valid OpenAI-compatible streams with every legal variation a server may use
(line endings, the optional space, comments, id/retry fields, JSON split over
several data lines) and feeds our parser arbitrary chunkings of them.
"""

from __future__ import annotations

import itertools
import json

import httpx
import pytest
from httpx_sse import EventSource
from hypothesis import given
from hypothesis import strategies as st

from chat.upstream import DeltaParser, StreamFailed

EOL = st.sampled_from(["\n", "\r\n", "\r"])
CONTENT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """One upstream body: chat.completion.chunk events, extra SSE lines, maybe `[DONE]` and more after it."""
    out: list[str] = []

    def line(text: str) -> None:
        eol = draw(EOL)
        if not text and out and out[-1].endswith("\r") and eol.startswith("\n"):
            eol = "\r"  # "\r" then "\n" would be one CRLF: the blank line would vanish
        out.append(text + eol)

    def field(name: str, value: str) -> None:
        line(f"{name}:{' ' if draw(st.booleans()) else ''}{value}")

    for content in draw(st.lists(st.none() | CONTENT, max_size=6)):
        if draw(st.booleans()):
            line(": keep-alive")
        if draw(st.booleans()):
            field("event", "message")
        if draw(st.booleans()):
            field("id", str(draw(st.integers(0, 99))))
        if draw(st.booleans()):
            field("retry", "1000")
        delta = {} if content is None else {"content": content}
        chunk = {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
        indent = draw(st.sampled_from([None, 1]))  # indent: JSON over several `data:` lines
        for data in json.dumps(chunk, ensure_ascii=draw(st.booleans()), indent=indent).split("\n"):
            field("data", data)
        line("")
    if draw(st.booleans()):
        field("data", "[DONE]")
        line("")
        field("data", json.dumps({"choices": [{"delta": {"content": "after done"}}]}))
        line("")
    return "".join(out).encode()


@st.composite
def chunked(draw: st.DrawFn, body: bytes) -> list[bytes]:
    cuts = sorted(draw(st.sets(st.integers(0, len(body)), max_size=12)))
    edges = [0, *cuts, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def reference(pieces: list[bytes]) -> list[str]:
    """What httpx-sse decodes from the same pieces, turned into delta contents as OpenAI's rules say."""
    response = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(pieces))
    contents = []
    for event in EventSource(response).iter_sse():
        if not event.data:
            continue
        if event.data == "[DONE]":
            break
        content = json.loads(event.data)["choices"][0]["delta"].get("content")
        if content:
            contents.append(content)
    return contents


def parse(pieces: list[bytes]) -> list[str]:
    parser = DeltaParser()
    contents: list[str] = []
    for piece in pieces:
        if parser.done:
            break
        contents += parser.feed(piece)
    if not parser.done:
        contents += parser.finish()
    return contents


@given(st.data())
def test_any_chunking_of_any_valid_stream_decodes_as_httpx_sse_does(data: st.DataObject) -> None:
    body = data.draw(streams())
    pieces = data.draw(chunked(body))
    assert parse(pieces) == reference(pieces)


def test_a_body_cut_at_every_byte_still_decodes() -> None:
    body = b'data: {"choices":[{"delta":{"content":"caf\xc3\xa9"}}]}\r\n\r\ndata:[DONE]\r\n\r\n'
    pieces = [body[i : i + 1] for i in range(len(body))]
    assert parse(pieces) == reference(pieces) == ["café"]


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"data: {not json\n\n", "bad_stream"),
        (b"data: [1, 2]\n\n", "bad_stream"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "stream_error"),
        (b"event: error\ndata: upstream fell over\n\n", "stream_error"),
    ],
)
def test_what_is_not_a_delta_fails_the_stream(body: bytes, kind: str) -> None:
    with pytest.raises(StreamFailed) as failure:
        DeltaParser().feed(body)
    assert failure.value.kind == kind
