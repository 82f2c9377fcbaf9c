"""Hostile input over real HTTP: the service never answers 500, never leaks internals,
always answers errors as `{"error": "..."}` with a documented status, and streams valid bodies.

Property-based (hypothesis) over bodies, JSON shapes, headers, content types,
encodings and sizes, against the session app server in front of the fake upstream.
"""

from __future__ import annotations

import codecs
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chat.headers import SECURITY_HEADERS
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.support import AppServer, app_server, decode_sse, settings_for

LIMIT = 64 * 1024  # CHAT_MAX_BODY_BYTES default, which the session server uses
INVALID = {"error": "Invalid request body"}
TOO_LARGE = {"error": f"Request body too large: the limit is {LIMIT} bytes."}
LEAKS = ("Traceback", "/work", ".py", 'File "', "site-packages")
CHECKS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Text a client may legitimately send (lone surrogates are refused: see the test below).
TEXT = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
NOT_A_MESSAGE = st.none() | st.booleans() | st.integers() | st.floats() | st.just("") | st.lists(TEXT, max_size=3)


@pytest.fixture(scope="module")
def client(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def post(client: httpx.Client, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post("/api/chat/stream", content=content, headers=headers or {})


def assert_safe(response: httpx.Response) -> None:
    """Every answer: a documented status, security headers, and errors in the contract's shape."""
    assert response.status_code in (200, 400, 413), (response.status_code, response.text[:300])
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name.decode()) == value.decode()
    if response.status_code != 200:
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert list(body) == ["error"]
        assert isinstance(body["error"], str)
        for leak in LEAKS:
            assert leak not in response.text


def assert_streamed(response: httpx.Response) -> None:
    """A valid body reached the model: an SSE answer ending in [DONE]."""
    assert response.status_code == 200, response.text[:300]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert decode_sse(response.content)[-1] == ("message", "[DONE]")


# ---------------------------------------------------------------- bodies


@CHECKS
@given(body=st.binary(max_size=2048))
@example(body=b"")
@example(body=b"\xff\xfe\x00")
@example(body=b'{"message":"\xff"}')
@example(body=b"null")
@example(body=b'{"message": NaN}')
@example(body=b'{"message": Infinity}')
@example(body=b'{"message":"' + b"9" * 5000 + b'"')
@example(body=b'{"message": ' + b"9" * 5000 + b"}")
def test_arbitrary_bytes_never_break_the_service(client: httpx.Client, body: bytes) -> None:
    assert_safe(post(client, body))


@CHECKS
@given(value=JSON_VALUES)
def test_arbitrary_json_is_streamed_or_refused_exactly(client: httpx.Client, value: object) -> None:
    response = post(client, json.dumps(value).encode())
    assert_safe(response)
    expected = _expected_refusal(value)
    if expected is None:
        assert_streamed(response)
    else:
        assert response.status_code == 400
        assert response.json()["error"].startswith(expected)


def _expected_refusal(value: object) -> str | None:
    """The contract as an oracle: the start of the 400's message for `value`, None if it must stream."""
    if not isinstance(value, dict) or not isinstance(value.get("message"), str) or not value["message"]:
        return INVALID["error"]
    history = value.get("history")
    if history is None:
        return None
    if not isinstance(history, list):
        return "history must be a list"
    for index, turn in enumerate(history):
        if not (
            isinstance(turn, dict)
            and turn.get("role") in ("user", "assistant", "system")
            and isinstance(turn.get("content"), str)
        ):
            return f"history[{index}]"
    return None


@CHECKS
@given(message=NOT_A_MESSAGE, extra=st.dictionaries(TEXT, JSON_VALUES, max_size=3))
def test_a_missing_or_wrongly_typed_message_is_the_exact_400(
    client: httpx.Client, message: object, extra: dict[str, object]
) -> None:
    response = post(client, json.dumps({**extra, "message": message}).encode())
    assert response.status_code == 400
    assert response.content == b'{"error":"Invalid request body"}'
    assert_safe(response)


@CHECKS
@given(message=TEXT, history=st.lists(JSON_VALUES, max_size=4))
def test_malformed_history_is_a_400_saying_what_is_wrong(
    client: httpx.Client, message: str, history: list[object]
) -> None:
    response = post(client, json.dumps({"message": message, "history": history}).encode())
    assert_safe(response)
    turns_ok = all(
        isinstance(t, dict) and t.get("role") in ("user", "assistant", "system") and isinstance(t.get("content"), str)
        for t in history
    )
    if turns_ok:
        assert_streamed(response)
    else:
        assert response.status_code == 400
        assert response.json()["error"].startswith("history[")


@CHECKS
@given(message=TEXT, codec=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"]))
def test_a_valid_body_in_any_json_encoding_is_streamed(client: httpx.Client, message: str, codec: str) -> None:
    """JSON's own encodings (RFC 8259 §8.1 names UTF-8; Python's json detects UTF-16/32 and BOMs) all stream."""
    response = post(client, json.dumps({"message": message}, ensure_ascii=False).encode(codec))
    assert_safe(response)
    assert_streamed(response)


@pytest.mark.parametrize(
    ("body", "streams"),
    [
        (codecs.BOM_UTF8 + b'{"message":"hi"}', True),
        (b'{"message":"hi","message":""}', False),
        (b'{"message":1,"message":"hi"}', True),
        (b'{"message":"hi","n":NaN,"i":-Infinity}', True),
        (b"[" * 30000 + b"]" * 30000, False),
        (b'{"message":"hi","history":' + b"[" * 30000 + b"]" * 30000 + b"}", False),
        (
            b'{"message":"hi","history":[{"role":"user","content":"a","x":'
            + b'{"a":' * 500
            + b"1"
            + b"}" * 500
            + b"}]}",
            True,
        ),
        (b'{"message":"caf\xc3\xa9 \xf0\x9f\x98\x80"}', True),
        (b'{"message":"caf\xe9"}', False),
    ],
    ids=[
        "bom",
        "duplicate-empty-last",
        "duplicate-valid-last",
        "nan-elsewhere",
        "deep-array",
        "deep-history",
        "deep-extra-field",
        "utf8",
        "latin1",
    ],
)
def test_edge_bodies(client: httpx.Client, body: bytes, streams: bool) -> None:
    response = post(client, body)
    assert_safe(response)
    if streams:
        assert_streamed(response)
    else:
        assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    [
        b'{"message":"\\ud800"}',
        b'{"message":"\xed\xa0\x80"}',
        b'{"message":"hi","history":[{"role":"user","content":"\\udfff"}]}',
    ],
    ids=["escaped", "raw-bytes", "history"],
)
def test_lone_surrogates_are_refused_with_a_clear_400(client: httpx.Client, body: bytes) -> None:
    response = post(client, body)
    assert_safe(response)
    assert response.status_code == 400
    assert "unpaired UTF-16 surrogate" in response.json()["error"]


# ---------------------------------------------------------------- headers, content types, encodings


# h11 (the client) refuses values with surrounding whitespace, so they are stripped.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(str.strip)


@CHECKS
@given(
    content_type=st.one_of(
        HEADER_TEXT,
        st.sampled_from(
            [
                "application/json",
                "application/json; charset=utf-8",
                "application/json; charset=latin-1",
                "application/json; charset=utf-16",
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
            ]
        ),
    ),
    encoding=st.sampled_from(["gzip", "br", "deflate", "identity", "gzip, br", "x-junk"]),
    extra=st.dictionaries(st.sampled_from(["x-forwarded-for", "authorization", "accept", "x-junk"]), HEADER_TEXT),
)
def test_headers_content_types_and_encodings_do_not_change_the_outcome(
    client: httpx.Client, content_type: str, encoding: str, extra: dict[str, str]
) -> None:
    headers = {**extra, "content-type": content_type, "content-encoding": encoding}
    response = post(client, b'{"message":"hi"}', headers)
    assert_safe(response)
    assert_streamed(response)


def test_a_real_gzip_body_is_refused_cleanly(client: httpx.Client) -> None:
    import gzip

    response = post(client, gzip.compress(b'{"message":"hi"}'), {"content-encoding": "gzip"})
    assert_safe(response)
    assert response.json() == INVALID


# ---------------------------------------------------------------- sizes


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(LIMIT - 40, LIMIT + 40) | st.integers(LIMIT + 1, 4 * LIMIT), chunked=st.booleans())
def test_bodies_up_to_the_limit_stream_and_above_it_are_413(client: httpx.Client, size: int, chunked: bool) -> None:
    body = json.dumps({"message": "a" * max(1, size - 15)}).encode()
    content: bytes | Iterator[bytes] = (
        iter([body[i : i + 8192] for i in range(0, len(body), 8192)]) if chunked else body
    )
    response = client.post("/api/chat/stream", content=content)
    assert_safe(response)
    if len(body) > LIMIT:
        assert response.status_code == 413
        assert response.json() == TOO_LARGE
    else:
        assert_streamed(response)


def _raw_request(port: int, head: bytes, body_pieces: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head`, then body pieces until the server answers; return (answer, body bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        sent = 0
        sock.settimeout(0.2)
        for piece in body_pieces:
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                answer = b""
            if answer:
                return answer, sent
            sock.sendall(piece)
            sent += len(piece)
        sock.settimeout(5)
        return sock.recv(65536), sent


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server: AppServer) -> None:
    head = (
        b"POST /api/chat/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: 100000000\r\n\r\n"
    )
    started = time.monotonic()
    answer, sent = _raw_request(server.port, head, iter([b"{" * 1024] * 8))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent == 0
    assert time.monotonic() - started < 2


def test_an_undeclared_chunked_body_is_cut_off_once_past_the_limit(server: AppServer) -> None:
    head = b"POST /api/chat/stream HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    piece = b"2000\r\n" + b"a" * 0x2000 + b"\r\n"  # 8 KiB chunks, never terminated
    answer, sent = _raw_request(server.port, head, iter([piece] * 64))  # up to 512 KiB offered
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 3 * LIMIT


# ---------------------------------------------------------------- CORS and security headers on every response


@pytest.fixture(scope="module")
def cors_server(fake: FakeOpenAI) -> Iterator[AppServer]:
    with app_server(settings_for(fake, cors_allow_origins=("https://app.example",))) as started:
        yield started


def test_cors_allows_only_the_configured_origin(cors_server: AppServer) -> None:
    with httpx.Client(base_url=cors_server.url) as http:
        allowed = http.post("/api/chat/stream", json={"message": "hi"}, headers={"origin": "https://app.example"})
        other = http.post("/api/chat/stream", json={"message": "hi"}, headers={"origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(("origin", "status"), [("https://app.example", 200), ("https://evil.example", 400)])
def test_cors_preflight_answers_carry_security_headers(cors_server: AppServer, origin: str, status: int) -> None:
    response = httpx.options(
        f"{cors_server.url}/api/chat/stream",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name.decode()) == value.decode()
    assert response.status_code == status
    if status == 400:  # the refusal, in the contract's shape
        assert response.headers["content-type"] == "application/json"
        assert list(response.json()) == ["error"]


@pytest.mark.parametrize(("method", "path"), [("GET", "/api/chat/stream"), ("GET", "/nope"), ("PUT", "/healthz")])
def test_other_routes_and_methods_are_json_errors_with_security_headers(
    client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path)
    assert response.status_code in (404, 405)
    assert list(response.json()) == ["error"]
    for name, value in SECURITY_HEADERS:
        assert response.headers.get(name.decode()) == value.decode()
