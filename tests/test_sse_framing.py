"""The SSE framing rules of the contract, byte for byte, and lossless for standard parsers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chat import sse
from tests.harness.support import decode_sse

TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]))


@pytest.mark.parametrize(
    ("delta", "wire"),
    [
        ("Hello", b"event:message\ndata:Hello\n\n"),
        (" world", b"event:message\ndata:  world\n\n"),
        ("a\nb", b"event:message\ndata:a\ndata:b\n\n"),
        ("x\r\ny", b"event:message\ndata:x\ndata:y\n\n"),
        ("x\ry", b"event:message\ndata:x\ndata:y\n\n"),
        ("[DONE]", b"event:message\ndata:[DONE]\n\n"),
        ("a\n b", b"event:message\ndata:a\ndata:  b\n\n"),
        ("trailing ", b"event:message\ndata:trailing \n\n"),
        (":colon", b"event:message\ndata::colon\n\n"),
        ("data: x", b"event:message\ndata:data: x\n\n"),
        ("end\n", b"event:message\ndata:end\ndata:\n\n"),
        ("😀 中文", "event:message\ndata:😀 中文\n\n".encode()),
    ],
)
def test_contract_framing_examples(delta: str, wire: bytes) -> None:
    assert sse.message(delta) == wire


def test_done_is_the_message_event_of_the_text_done() -> None:
    """The contract: a `[DONE]` delta is indistinguishable from the end marker, as in the reference."""
    assert sse.message("[DONE]") == sse.DONE
    assert decode_sse(sse.DONE) == [("message", "[DONE]")]


def test_error_events_are_framed_like_messages() -> None:
    assert sse.error("boom") == b"event:error\ndata:boom\n\n"
    assert decode_sse(sse.error(" two\nlines")) == [("error", " two\nlines")]


def test_lone_surrogate_becomes_replacement_character() -> None:
    assert sse.message("a\ud83db") == "event:message\ndata:a\ufffdb\n\n".encode()


def test_heartbeat_is_an_sse_comment_that_parsers_ignore() -> None:
    assert decode_sse(sse.HEARTBEAT + sse.message("x")) == [("message", "x")]


@given(TEXT)
def test_standard_parser_recovers_every_payload(payload: str) -> None:
    """Whatever the model says, a standard client decodes exactly it (CR/CRLF normalised)."""
    if not payload:
        return
    expected = re.sub(r"\r\n|\r", "\n", payload)
    assert decode_sse(sse.message(payload)) == [("message", expected)]


@given(st.lists(TEXT.filter(bool), max_size=8))
def test_sequence_of_events_decodes_to_the_deltas(deltas: list[str]) -> None:
    wire = b"".join(sse.message(delta) for delta in deltas) + sse.DONE
    expected = [("message", re.sub(r"\r\n|\r", "\n", delta)) for delta in deltas] + [("message", "[DONE]")]
    assert decode_sse(wire) == expected
