"""`sam local start-api` behaviour: SAM CLI's own local API Gateway service routes to our function.

SAM's service runs from template.yaml in the SAM CLI virtualenv (tests/harness/sam_local_api.py);
the function runs under AWS's emulator with AWS_SAM_LOCAL=true, so the answer is
buffered into one API Gateway proxy response, as it is under the real command.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.harness import dynamodb
from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.ports import free_port
from tests.harness.processes import ChildProcess, wait_for_port
from tests.harness.runtime_process import emulator, runtime_env
from tests.harness.sam_cli import ROOT, sam_tool, template_environment
from tests.harness.support import TEST_KEY, decode_sse, unique


@contextmanager
def start_api(env: dict[str, str]) -> Iterator[str]:
    """SAM CLI's local API service from template.yaml, in front of the function under AWS's emulator."""
    with emulator(env) as (invoke_url, _):
        port = free_port()
        command = [
            str(sam_tool("python")),
            str(ROOT / "tests" / "harness" / "sam_local_api.py"),
            str(ROOT / "template.yaml"),
        ]
        with ChildProcess([*command, str(port), invoke_url], dict(os.environ)) as sam:
            wait_for_port(port, sam)
            yield f"http://127.0.0.1:{port}"


def readme_env(fake: FakeOpenAI, **env_json: str) -> dict[str, str]:
    """The function's environment under `sam local start-api --env-vars env.json`: the template's
    variables as SAM resolves them, then README's env.json (its key and model aimed at the fake)."""
    readme = {"OPENAI_API_KEY": TEST_KEY, "OPENAI_API_KEY_SECRET_ID": "", "OPENAI_BASE_URL": fake.base_url}
    readme |= {"CHAT_AUTH": "none", "CHAT_STORE_URL": "none", **env_json}
    return runtime_env(fake, **{**template_environment(), **readme, "AWS_SAM_LOCAL": "true"})


@pytest.fixture(scope="module")
def local_api(fake: FakeOpenAI) -> Iterator[str]:
    with start_api(readme_env(fake)) as url:
        yield url


def test_post_streams_the_whole_event_sequence(local_api: str, fake: FakeOpenAI) -> None:
    message = fake.script(unique(), deltas("Hi", " there", "\n", "!"))
    response = httpx.post(f"{local_api}/api/chat/stream", json={"message": message}, timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert decode_sse(response.content) == [
        ("message", "Hi"),
        ("message", " there"),
        ("message", "\n"),
        ("message", "!"),
        ("message", "[DONE]"),
    ]


def test_bad_body_is_the_contract_400(local_api: str) -> None:
    response = httpx.post(f"{local_api}/api/chat/stream", content=b'{"message": 42}', timeout=60)
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid request body"}


def test_only_the_template_routes_exist(local_api: str) -> None:
    assert httpx.get(f"{local_api}/healthz", timeout=60).status_code == 403  # SAM's "Missing Authentication Token"


def test_the_chat_page_and_its_assets_are_served(local_api: str) -> None:
    """The template routes `GET /` and `GET /static/{name}` to the function: `sam local start-api` serves the page."""
    page_dir = ROOT / "functions" / "chat" / "chat" / "static"
    for path, name, media_type in [
        ("/", "index.html", "text/html; charset=utf-8"),
        ("/static/chat.css", "chat.css", "text/css; charset=utf-8"),
        ("/static/chat.js", "chat.js", "text/javascript; charset=utf-8"),
    ]:
        response = httpx.get(local_api + path, timeout=60)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == media_type
        # The page says whether the service keeps conversations; the rest is the file as shipped.
        served = response.content.replace(b'data-conversations="on"', b'data-conversations="off"')
        assert served == (page_dir / name).read_bytes()
        assert "script-src 'self'" in response.headers["content-security-policy"]


@pytest.fixture(scope="module")
def local_api_with_table(fake: FakeOpenAI) -> Iterator[str]:
    """As `sam local start-api --env-vars` with CHAT_STORE_URL and AWS_ENDPOINT_URL_DYNAMODB set (README):
    DynamoDB is moto's server (AWS cannot run here), the table created from template.yaml."""
    table = unique("chat")
    with dynamodb.moto_server() as endpoint:
        dynamodb.create_table(dynamodb.client(endpoint), table)
        with start_api(readme_env(fake, **dynamodb.server_env(endpoint, table))) as url:
            yield url


def test_conversations_work_through_the_template_routes(local_api_with_table: str, fake: FakeOpenAI) -> None:
    api = local_api_with_table
    first = fake.script(unique(), deltas("One"))
    started = httpx.post(f"{api}/api/chat/stream", json={"message": first, "store": True}, timeout=60)
    assert started.status_code == 200
    conversation_id = started.headers["x-conversation-id"]
    second = fake.script(unique(), deltas("Two"))
    continued = httpx.post(
        f"{api}/api/chat/stream", json={"message": second, "conversation_id": conversation_id}, timeout=60
    )
    assert decode_sse(continued.content) == [("message", "Two"), ("message", "[DONE]")]
    listed = httpx.get(f"{api}/api/conversations", timeout=60).json()
    assert [c["id"] for c in listed["conversations"]] == [conversation_id]
    stored = httpx.get(f"{api}/api/conversations/{conversation_id}", timeout=60).json()
    assert [m["content"] for m in stored["messages"]] == [first, "One", second, "Two"]
    assert httpx.post(f"{api}/api/conversations/{conversation_id}/stop", timeout=60).status_code == 204
    assert httpx.delete(f"{api}/api/conversations/{conversation_id}", timeout=60).status_code == 204
    assert httpx.get(f"{api}/api/conversations/{conversation_id}", timeout=60).status_code == 404
