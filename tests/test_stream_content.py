"""What a client receives for each kind of upstream content, through real HTTP end to end.

Upstream: the fake OpenAI server over 127.0.0.1, called by the real `openai` SDK.
Client: httpx + httpx-sse, a standard SSE parser.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.harness.fake_openai import Delta, FakeOpenAI, Raw, Step, chunk_json, deltas
from tests.harness.support import AppServer, post_stream, unique

DONE = ("message", "[DONE]")


def expected_events(contents: list[str]) -> list[tuple[str, str]]:
    return [("message", re.sub(r"\r\n|\r", "\n", c)) for c in contents if c] + [DONE]


CONTENT_CASES: dict[str, list[str]] = {
    "plain words": ["Hello", " world", "!"],
    "newlines": ["line one\nline two", "\n", "\n\nthree"],
    "crlf and cr": ["a\r\nb", "c\rd", "\r"],
    "leading and trailing spaces": ["  two leading", "trailing  ", " ", "   "],
    "leading colon": [":not a comment", "\n:also not"],
    "done as content": ["[DONE]", " and more"],
    "data prefix as content": ["data: x", "event: error", "\ndata:y"],
    "emoji and cjk split": ["😀", "中", "文", "👩‍💻", "é"],
    "64 KiB delta": ["x" * 65536, "y" * 100],
    "markdown": ["```python\n", "print('hi')\n", "```"],
}


@pytest.mark.parametrize("contents", CONTENT_CASES.values(), ids=CONTENT_CASES.keys())
def test_decoded_events_equal_upstream_deltas(server: AppServer, fake: FakeOpenAI, contents: list[str]) -> None:
    key = fake.script(unique(), deltas(*contents))
    result = post_stream(server.url, {"message": key})
    assert result.status == 200
    assert result.events == expected_events(contents)


def test_headers_match_the_contract(server: AppServer, fake: FakeOpenAI) -> None:
    result = post_stream(server.url, {"message": fake.script(unique(), deltas("hi"))})
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert result.headers["x-content-type-options"] == "nosniff"


def test_wire_bytes_match_the_reference_for_plain_content(server: AppServer, fake: FakeOpenAI) -> None:
    result = post_stream(server.url, {"message": fake.script(unique(), deltas("Hello", " world", "a\nb"))})
    assert result.raw == (
        b"event:message\ndata:Hello\n\n"
        b"event:message\ndata:  world\n\n"
        b"event:message\ndata:a\ndata:b\n\n"
        b"event:message\ndata:[DONE]\n\n"
    )


def test_empty_and_missing_content_produce_no_events(server: AppServer, fake: FakeOpenAI) -> None:
    no_choices = b'data: {"id":"x","object":"chat.completion.chunk","choices":[]}\n\n'
    role_only = b"data: " + chunk_json(None, role="assistant") + b"\n\n"
    steps: list[Step] = [Raw(role_only), Delta(""), Delta(None), Raw(no_choices), Delta("only"), Delta("")]
    key = fake.script(unique(), [*steps, *deltas()])
    assert post_stream(server.url, {"message": key}).events == [("message", "only"), DONE]


def test_lone_surrogate_escape_becomes_replacement_character(server: AppServer, fake: FakeOpenAI) -> None:
    surrogate = b'data: {"choices":[{"index":0,"delta":{"content":"a\\ud83db"}}]}\n\n'
    key = fake.script(unique(), [Raw(surrogate), *deltas("ok")])
    assert post_stream(server.url, {"message": key}).events == [("message", "a\ufffdb"), ("message", "ok"), DONE]


def test_utf8_split_across_network_reads_is_reassembled(server: AppServer, fake: FakeOpenAI) -> None:
    line = b"data: " + json.dumps({"choices": [{"delta": {"content": "😀中"}}]}, ensure_ascii=False).encode() + b"\n\n"
    cut = line.index("😀".encode()) + 2
    key = fake.script(unique(), [Raw(line[:cut]), Raw(line[cut:]), *deltas()])
    assert post_stream(server.url, {"message": key}).events == [("message", "😀中"), DONE]


def test_clean_end_without_done_still_ends_with_done(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), deltas("partial", " answer", done=False))
    assert post_stream(server.url, {"message": key}).events == [("message", "partial"), ("message", " answer"), DONE]


def test_crlf_framed_upstream_is_understood(server: AppServer, fake: FakeOpenAI) -> None:
    body = b"data: " + chunk_json("crlf") + b"\r\n\r\ndata: [DONE]\r\n\r\n"
    key = fake.script(unique(), [Raw(body)])
    assert post_stream(server.url, {"message": key}).events == [("message", "crlf"), DONE]


def test_nothing_after_upstream_done_is_relayed(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [*deltas("before"), Delta("after")])
    assert post_stream(server.url, {"message": key}).events == [("message", "before"), DONE]


def test_history_and_settings_are_sent_upstream(fake: FakeOpenAI) -> None:
    from tests.harness.support import app_server, settings_for

    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    key = fake.script(unique(), deltas("ok"))
    with app_server(settings_for(fake, openai_model="my-model", openai_max_tokens=77)) as server:
        assert post_stream(server.url, {"message": key, "history": history}).events == [("message", "ok"), DONE]
    sent = fake.requests_for(key)[0].json
    assert sent["messages"] == [*history, {"role": "user", "content": key}]
    assert sent["model"] == "my-model"
    assert sent["max_tokens"] == 77
    assert sent["stream"] is True
