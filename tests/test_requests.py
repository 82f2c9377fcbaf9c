"""Client input: the contract's bad bodies, size and history limits, routes, headers, CORS."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.support import AppServer, app_server, post_stream, settings_for, unique

INVALID = b'{"error":"Invalid request body"}'


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"{",
        b"null",
        b"[]",
        b'["message"]',
        b"42",
        b'"hi"',
        b"{}",
        b'{"message": ""}',
        b'{"message": null}',
        b'{"message": 42}',
        b'{"message": ["hi"]}',
        b'{"message": {"text": "hi"}}',
        b'{"msg": "hi"}',
        b"\xff\xfe\x00garbage",
        b"[" * 30000,
    ],
    ids=lambda content: content[:20].decode(errors="replace") or "empty",
)
def test_bad_bodies_get_the_contract_400(server: AppServer, content: bytes) -> None:
    result = post_stream(server.url, content=content, headers={"content-type": "application/json"})
    assert result.status == 400
    assert result.headers["content-type"] == "application/json"
    assert result.raw == INVALID


def test_extra_fields_are_ignored(server: AppServer, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), deltas("ok"))
    result = post_stream(server.url, {"message": key, "stream": False, "model": "other"})
    assert result.events == [("message", "ok"), ("message", "[DONE]")]
    assert fake.requests_for(key)[0].json["model"] == "fake-model"


@pytest.mark.parametrize(
    ("history", "needle"),
    [
        ("not a list", "history must be a list"),
        ([{"role": "robot", "content": "x"}], "history[0].role"),
        ([{"role": "user", "content": 3}], "history[0].content"),
        ([{"role": "user", "content": "ok"}, "turn"], "history[1]"),
    ],
)
def test_malformed_history_is_a_clear_400(server: AppServer, history: object, needle: str) -> None:
    result = post_stream(server.url, {"message": "hi", "history": history})
    assert result.status == 400
    assert needle in json.loads(result.raw)["error"]


def test_history_over_the_limit_is_refused_not_truncated(fake: FakeOpenAI) -> None:
    history = [{"role": "user", "content": str(i)} for i in range(4)]
    with app_server(settings_for(fake, max_history_turns=3)) as server:
        result = post_stream(server.url, {"message": "hi", "history": history})
    assert result.status == 400
    assert json.loads(result.raw)["error"].startswith("history has 4 turns; the limit is 3.")


def test_body_over_the_limit_is_413(fake: FakeOpenAI) -> None:
    with app_server(settings_for(fake, max_body_bytes=1024)) as server:
        result = post_stream(server.url, {"message": "x" * 2000})
    assert result.status == 413
    assert json.loads(result.raw) == {"error": "Request body too large: the limit is 1024 bytes."}


def test_healthz_answers_without_the_upstream(fake: FakeOpenAI) -> None:
    before = len(fake.requests)
    with app_server(settings_for(fake, openai_api_key="")) as server:
        response = httpx.get(f"{server.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert len(fake.requests) == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/api/chat/stream", 405), ("POST", "/nowhere", 404), ("GET", "/docs", 404)],
)
def test_routing_errors_are_json(server: AppServer, method: str, path: str, status: int) -> None:
    response = httpx.request(method, f"{server.url}{path}")
    assert response.status_code == status
    assert set(response.json()) == {"error"}


def test_security_headers_on_errors_too(server: AppServer) -> None:
    response = httpx.post(f"{server.url}/api/chat/stream", content=b"{}")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


def test_openapi_documents_the_endpoint(server: AppServer) -> None:
    schema = httpx.get(f"{server.url}/openapi.json").json()
    operation = schema["paths"]["/api/chat/stream"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["required"] == ["message"]
    assert "text/event-stream" in operation["responses"]["200"]["content"]


def test_cors_is_off_by_default(server: AppServer) -> None:
    response = httpx.options(
        f"{server.url}/api/chat/stream",
        headers={"origin": "https://example.com", "access-control-request-method": "POST"},
    )
    assert "access-control-allow-origin" not in response.headers


def test_cors_allows_only_configured_origins(fake: FakeOpenAI) -> None:
    with app_server(settings_for(fake, cors_allow_origins=("https://app.example",))) as server:
        allowed = httpx.options(
            f"{server.url}/api/chat/stream",
            headers={"origin": "https://app.example", "access-control-request-method": "POST"},
        )
        other = httpx.options(
            f"{server.url}/api/chat/stream",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_a_client_on_another_origin_can_continue_and_resume_a_conversation(fake: FakeOpenAI, tmp_path: Path) -> None:
    """It must read X-Conversation-Id (and Retry-After) and may send Last-Event-ID to resume."""
    origin = {"origin": "https://app.example"}
    settings = settings_for(fake, cors_allow_origins=("https://app.example",), store_url=f"sqlite:///{tmp_path / 'c'}")
    with app_server(settings) as server:
        message = fake.script(unique(), deltas("hi"))
        answer = post_stream(server.url, {"message": message, "store": True}, headers=origin)
        preflight = httpx.options(
            f"{server.url}/api/conversations/{answer.headers['x-conversation-id']}/stream",
            headers={
                **origin,
                "access-control-request-method": "GET",
                "access-control-request-headers": "last-event-id",
            },
        )
    exposed = {name.strip() for name in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-conversation-id", "retry-after"} <= exposed
    assert preflight.status_code == 200
    assert "last-event-id" in preflight.headers["access-control-allow-headers"].lower()
