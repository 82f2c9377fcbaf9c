"""The OpenAI key and the client bearer token from Secrets Manager.

AWS itself cannot run here, so Secrets Manager is moto's: in-process (`mock_aws`)
for most cases, and a closed local port for "unreachable". Everything else is real:
Powertools `get_secret`, boto3, the SDK, HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat.snapstart import forget_powertools_caches
from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.ports import free_port
from tests.harness.support import app_server, post_stream, settings_for, unique

OLD_KEY = "sk-old-FAKE-ROTATED-KEY-ONE"
NEW_KEY = "sk-new-FAKE-ROTATED-KEY-TWO"
TOKEN = "tok-Wf3Hx8Nd1Lq6Zs2Vm9Rb4Tc7Yk5Pj0"
DONE = ("message", "[DONE]")


@pytest.fixture
def strict_fake() -> Iterator[FakeOpenAI]:
    """An upstream that checks the key, as OpenAI does."""
    with FakeOpenAI() as server:
        yield server


def test_key_from_a_bare_secret(aws: Any, strict_fake: FakeOpenAI) -> None:
    arn = aws.create_secret(Name="openai/key", SecretString=NEW_KEY)["ARN"]
    strict_fake.api_keys = {NEW_KEY}
    key = strict_fake.script(unique(), deltas("from secret"))
    with app_server(settings_for(strict_fake, openai_api_key="", openai_api_key_secret_id=arn)) as server:
        result = post_stream(server.url, {"message": key})
    assert result.events == [("message", "from secret"), DONE]


def test_key_from_a_json_secret_by_name(aws: Any, strict_fake: FakeOpenAI) -> None:
    aws.create_secret(Name="openai/json", SecretString=json.dumps({"OPENAI_API_KEY": NEW_KEY, "other": "x"}))
    strict_fake.api_keys = {NEW_KEY}
    key = strict_fake.script(unique(), deltas("json"))
    with app_server(settings_for(strict_fake, openai_api_key="", openai_api_key_secret_id="openai/json")) as server:
        assert post_stream(server.url, {"message": key}).events == [("message", "json"), DONE]


def test_rotated_key_is_fetched_again_once_on_401(aws: Any, strict_fake: FakeOpenAI) -> None:
    aws.create_secret(Name="openai/rotating", SecretString=OLD_KEY)
    strict_fake.api_keys = {OLD_KEY}
    first, second = strict_fake.script(unique(), deltas("one")), strict_fake.script(unique(), deltas("two"))
    settings = settings_for(strict_fake, openai_api_key="", openai_api_key_secret_id="openai/rotating")
    with app_server(settings) as server:
        assert post_stream(server.url, {"message": first}).events == [("message", "one"), DONE]
        aws.put_secret_value(SecretId="openai/rotating", SecretString=NEW_KEY)
        strict_fake.api_keys = {NEW_KEY}
        assert post_stream(server.url, {"message": second}).events == [("message", "two"), DONE]
    attempts = [r.headers["authorization"] for r in strict_fake.requests_for(second)]
    assert attempts == [f"Bearer {OLD_KEY}", f"Bearer {NEW_KEY}"]


def test_401_with_an_unchanged_secret_fails_once_without_looping(aws: Any, strict_fake: FakeOpenAI) -> None:
    aws.create_secret(Name="openai/revoked", SecretString=OLD_KEY)
    strict_fake.api_keys = {NEW_KEY}
    key = unique()
    with app_server(settings_for(strict_fake, openai_api_key="", openai_api_key_secret_id="openai/revoked")) as server:
        result = post_stream(server.url, {"message": key})
    assert result.status == 502
    assert len(strict_fake.requests_for(key)) == 1
    for fragment in (OLD_KEY, OLD_KEY[:8], OLD_KEY[-4:]):
        assert fragment not in result.raw.decode()


def test_missing_secret_is_503_and_the_service_recovers(aws: Any, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), deltas("back"))
    settings = settings_for(fake, openai_api_key="", openai_api_key_secret_id="openai/later", secret_cache_seconds=0)
    with app_server(settings) as server:
        missing = post_stream(server.url, {"message": key})
        assert missing.status == 503
        assert json.loads(missing.raw) == {"error": "A secret the service needs could not be read; try again later."}
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        aws.create_secret(Name="openai/later", SecretString=NEW_KEY)
        assert post_stream(server.url, {"message": key}).events == [("message", "back"), DONE]


def test_empty_or_malformed_secret_is_503(aws: Any, fake: FakeOpenAI) -> None:
    aws.create_secret(Name="openai/bad", SecretString=json.dumps({"wrong_field": NEW_KEY}))
    with app_server(settings_for(fake, openai_api_key="", openai_api_key_secret_id="openai/bad")) as server:
        result = post_stream(server.url, {"message": "hi"})
    assert result.status == 503
    assert NEW_KEY not in result.raw.decode()


def test_unreachable_secrets_manager_is_503(monkeypatch: pytest.MonkeyPatch, fake: FakeOpenAI) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": f"http://127.0.0.1:{free_port()}",
    }.items():
        monkeypatch.setenv(name, value)
    forget_powertools_caches()
    try:
        with app_server(settings_for(fake, openai_api_key="", openai_api_key_secret_id="openai/key")) as server:
            result = post_stream(server.url, {"message": "hi"})
    finally:
        forget_powertools_caches()
    assert result.status == 503


# ---------------------------------------------------------------- bearer token for clients


@pytest.fixture
def token_server(aws: Any, fake: FakeOpenAI) -> Iterator[str]:
    arn = aws.create_secret(Name="chat/token", SecretString=TOKEN)["ARN"]
    with app_server(settings_for(fake, auth_token_secret_id=arn)) as server:
        yield server.url


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x"],
)
def test_requests_without_the_right_token_are_401(token_server: str, authorization: str | None) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    before = unique()
    result = post_stream(token_server, {"message": before}, headers=headers)
    assert result.status == 401
    assert result.headers["www-authenticate"] == "Bearer"
    assert json.loads(result.raw) == {"error": "Missing or invalid bearer token."}
    assert TOKEN not in result.raw.decode()


def test_the_right_token_streams(token_server: str, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), deltas("authorised"))
    result = post_stream(token_server, {"message": key}, headers={"authorization": f"Bearer {TOKEN}"})
    assert result.events == [("message", "authorised"), DONE]


def test_token_is_checked_before_the_body_is_read(token_server: str) -> None:
    result = post_stream(token_server, content=b"not json")
    assert result.status == 401
