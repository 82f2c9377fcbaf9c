"""Usage and budgets under the Lambda runtime: each invocation records what it used, the next sees it.

The loop runs as Lambda starts it (exec wrapper + interpreter) in a child process,
against the Runtime API double, the fake model, and DynamoDB as moto's server (a
separate process reaching it over HTTP; AWS itself cannot run here) with the table
built from template.yaml. `CHAT_AUTH=iam`, as the template sets for AuthMode=AWS_IAM:
the caller is the IAM principal in the Function URL event, with the default budgets.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from chat.usage import prompt_bound
from tests.harness import dynamodb
from tests.harness.fake_openai import FakeOpenAI, deltas
from tests.harness.lambda_events import function_url_event, split_streamed
from tests.harness.moto_atomic import atomic_items
from tests.harness.processes import ChildProcess
from tests.harness.runtime_api_double import RuntimeAPIDouble
from tests.harness.runtime_process import lambda_runtime, runtime_env
from tests.harness.support import decode_sse, unique

ALICE = "arn:aws:iam::123456789012:user/alice"
BOB = "arn:aws:iam::123456789012:user/bob"
MAX_TOKENS = 40


def signed_by(principal: str, event: dict[str, Any]) -> dict[str, Any]:
    """The event as a Function URL with AuthType AWS_IAM delivers it: the verified principal in the context."""
    event["requestContext"]["authorizer"] = {
        "iam": {"accountId": "123456789012", "userArn": principal, "userId": "AIDAEXAMPLE", "callerId": "AIDAEXAMPLE"}
    }
    return event


def usage_event(principal: str) -> dict[str, Any]:
    event = signed_by(principal, function_url_event(None))
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/api/usage"
    event["requestContext"]["http"]["method"] = "GET"
    event["body"] = None
    return event


@pytest.fixture
def endpoint() -> Iterator[str]:
    with dynamodb.moto_server() as url, atomic_items():
        dynamodb.create_table(dynamodb.client(url), "chat-lambda")
        yield url


@pytest.fixture
def double() -> Iterator[RuntimeAPIDouble]:
    with RuntimeAPIDouble() as api:
        yield api


def runtime(double: RuntimeAPIDouble, fake: FakeOpenAI, endpoint: str, per_day: int) -> ChildProcess:
    env = runtime_env(
        fake,
        **dynamodb.TEST_CREDENTIALS,
        AWS_LAMBDA_RUNTIME_API=double.address,
        AWS_ENDPOINT_URL_DYNAMODB=endpoint,
        CHAT_STORE_URL="dynamodb://chat-lambda",
        CHAT_AUTH="iam",
        CHAT_BUDGET_TOKENS_PER_DAY=str(per_day),
        OPENAI_MAX_TOKENS=str(MAX_TOKENS),
    )
    return lambda_runtime(env)


def test_usage_is_recorded_and_a_budget_holds_across_invocations(
    double: RuntimeAPIDouble, fake: FakeOpenAI, endpoint: str
) -> None:
    message = fake.script(unique("lambda"), deltas("Hi", " there"))
    estimate = prompt_bound([{"role": "user", "content": message}]) + MAX_TOKENS
    with runtime(double, fake, endpoint, per_day=estimate + 5) as process:
        first = double.invoke(signed_by(ALICE, function_url_event({"message": message})))
        second = double.invoke(signed_by(ALICE, function_url_event({"message": message})))
        other = double.invoke(signed_by(BOB, function_url_event({"message": message})))
        report = double.invoke(usage_event(ALICE))
    prelude, body = split_streamed(first.body)
    assert prelude["statusCode"] == 200
    assert decode_sse(body)[-1] == ("message", "[DONE]")
    # The second invocation sees what the first used: not enough is left for its reservation.
    refused, refusal = split_streamed(second.body)
    assert refused["statusCode"] == 429
    assert int(refused["headers"]["retry-after"]) > 0
    assert "daily budget" in json.loads(refusal)["error"]
    assert split_streamed(other.body)[0]["statusCode"] == 200  # budgets are per principal
    used = fake.requests_for(message)[0].prompt_tokens + 2
    payload = json.loads(split_streamed(report.body)[1])
    assert payload["day"] == {
        "used": used,
        "limit": estimate + 5,
        "remaining": estimate + 5 - used,
        "resets_at": payload["day"]["resets_at"],
    }
    lines = [json.loads(line) for line in process.output.splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("message") == "chat stream finished"]
    assert [line["caller"] for line in finished] == [ALICE, BOB]
    assert finished[0]["prompt_tokens"] + finished[0]["completion_tokens"] == used
    assert finished[0]["usage"] == "reported"
    metrics = [line for line in lines if "_aws" in line and "PromptTokens" in line]
    assert metrics
    assert all(ALICE not in json.dumps(line["_aws"]) for line in metrics)
