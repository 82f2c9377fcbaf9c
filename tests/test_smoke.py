"""The post-deploy smoke test (`python -m tools.smoke`), run against the real app on 127.0.0.1.

The app server, the fake upstream and HTTP are real. AWS itself cannot run here:
Secrets Manager is moto's, and for `--auth iam` a local stand-in for a Function URL
receives the request (re-checking its SigV4 signature with fake static credentials) and
plays a stream cut off mid-answer, which the local app never sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.fake_openai import Delta, FakeOpenAI, Reset, Sleep, deltas
from tests.harness.ports import free_port
from tests.harness.stand_in import StandIn
from tests.harness.support import AppServer, app_server, settings_for, unique
from tools import smoke

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tok-Smk4Rb8Lq2Wn6Xc1Vz9Pd3Hf7"
ACCESS_KEY, SECRET_KEY, SESSION_TOKEN = "TESTACCESSKEYNOTREAL", "fake-secret-key-for-tests", "fake-session"


def run_smoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = smoke.main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def test_a_healthy_stream_passes_and_reports_timings(
    server: AppServer, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    key = fake.script(unique(), [Sleep(0.05), *deltas("Hello", " world")])
    code, output = run_smoke(capsys, server.url, "--message", key)
    assert code == 0, output
    assert f"{server.url}/api/chat/stream answered 200 text/event-stream, 2 message events, [DONE]" in output
    assert "time to first byte" in output
    assert "to first message" in output
    assert "answer: Hello world" in output


def test_the_command_line_exits_non_zero_when_the_stream_breaks(server: AppServer, fake: FakeOpenAI) -> None:
    """As CI runs it: `python -m tools.smoke`, judged by its exit status."""
    key = fake.script(unique(), [Delta("partial"), Reset()])
    result = subprocess.run(
        [sys.executable, "-m", "tools.smoke", f"{server.url}/api/chat/stream", "--message", key],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("smoke test FAILED: the stream ended with an error event: ")


def test_an_empty_answer_fails(server: AppServer, fake: FakeOpenAI, capsys: pytest.CaptureFixture[str]) -> None:
    key = fake.script(unique(), deltas())
    code, output = run_smoke(capsys, server.url, "--message", key)
    assert code == 1
    assert "smoke test FAILED: the stream carried no answer: no message event before [DONE]" in output


def test_an_unreachable_url_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, f"http://127.0.0.1:{free_port()}")
    assert code == 1
    assert "smoke test FAILED: request to" in output
    assert "ConnectError" in output


def test_a_non_stream_answer_fails(server: AppServer, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, f"{server.url}/healthz/api/chat/stream")
    assert code == 1
    assert "smoke test FAILED: expected status 200, got 404" in output


# ---------------------------------------------------------------- bearer token


@pytest.fixture
def token_url(aws: Any, fake: FakeOpenAI) -> Iterator[str]:
    arn = aws.create_secret(Name="chat-stream/auth-token", SecretString=json.dumps({"token": TOKEN}))["ARN"]
    with app_server(settings_for(fake, auth_token_secret_id=arn)) as server:
        yield server.url


def test_token_from_an_environment_variable(
    token_url: str, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.setenv("CHAT_TOKEN", TOKEN)
    key = fake.script(unique(), deltas("authorised"))
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-env", "CHAT_TOKEN", "--message", key)
    assert code == 0, output
    assert "answer: authorised" in output
    assert TOKEN not in output


def test_token_from_the_stacks_secret(aws: Any, token_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    arn = aws.describe_secret(SecretId="chat-stream/auth-token")["ARN"]
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-secret", arn)
    assert code == 0, output
    assert TOKEN not in output


def test_a_wrong_token_fails_with_the_services_reason(
    token_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHAT_TOKEN", "tok-wrong-Qs9Lm2Xv")
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-env", "CHAT_TOKEN")
    assert code == 1
    assert 'smoke test FAILED: expected status 200, got 401: {"error":"Missing or invalid bearer token."}' in output
    assert "tok-wrong-Qs9Lm2Xv" not in output


def test_a_missing_token_variable_fails_before_asking(token_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-env", "NO_SUCH_VARIABLE_SET")
    assert code == 1
    assert "smoke test FAILED: the token from NO_SUCH_VARIABLE_SET is empty" in output


def test_a_missing_token_secret_fails_clearly(aws: Any, token_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-secret", "chat-stream/nothing-here")
    assert code == 1
    assert "smoke test FAILED: could not read the token secret chat-stream/nothing-here" in output
    assert "ResourceNotFoundException" in output


def test_under_github_actions_the_token_is_only_ever_printed_as_a_mask(
    token_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("CHAT_TOKEN", TOKEN)
    code, output = run_smoke(capsys, token_url, "--auth", "token", "--token-env", "CHAT_TOKEN")
    assert code == 0, output
    lines_with_token = [line for line in output.splitlines() if TOKEN in line]
    assert lines_with_token == [f"::add-mask::{TOKEN}"]
    assert output.startswith(f"::add-mask::{TOKEN}\n")


# ---------------------------------------------------------------- IAM (SigV4)


SIGNED_ANSWER = b"event:message\ndata:signed\n\nevent:message\ndata:[DONE]\n\n"


@pytest.fixture
def function_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """Every request to any host goes to a stand-in Function URL answering a stream; fake static credentials."""
    with StandIn(200, "text/event-stream", SIGNED_ANSWER) as stand_in:
        for name in ("NO_PROXY", "no_proxy", "AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{stand_in.port}")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        yield stand_in


def sigv4_signature(
    method: str,
    path: str,
    headers: dict[str, str],
    signed: list[str],
    body: bytes,
    secret: str,
    region: str,
    service: str,
) -> str:
    """SigV4 written from AWS's specification, independent of botocore (which signs in tools/smoke.py).

    Only what these requests use: no query string, a path that needs no escaping.
    """
    canonical_headers = "".join(f"{name}:{' '.join(headers[name].split())}\n" for name in signed)
    canonical_request = "\n".join(
        [method, path, "", canonical_headers, ";".join(signed), hashlib.sha256(body).hexdigest()]
    )
    amz_date = headers["x-amz-date"]
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("method", "expected"),
    [  # AWS's Signature Version 4 test suite: get-vanilla and post-vanilla
        ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ],
)
def test_the_independent_sigv4_matches_aws_test_vectors(method: str, expected: str) -> None:
    headers = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    assert (
        sigv4_signature(method, "/", headers, ["host", "x-amz-date"], b"", secret, "us-east-1", "service") == expected
    )


def test_iam_signs_for_lambda_in_the_region_of_the_function_url(
    function_url: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://abcdefghijklmnopqrstuvwxyz012345.lambda-url.eu-west-2.on.aws/"
    code, output = run_smoke(capsys, url, "--auth", "iam", "--message", "hello")
    assert code == 0, output
    [(path, headers, body)] = function_url.seen
    assert path == f"{url}api/chat/stream"
    assert json.loads(body) == {"message": "hello"}
    authorization = headers["authorization"]
    assert authorization.startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/")
    assert "/eu-west-2/lambda/aws4_request, SignedHeaders=" in authorization
    signed = authorization.split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"host", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "content-type"} <= set(signed)
    assert headers["x-amz-security-token"] == SESSION_TOKEN
    assert len(headers["x-amz-date"]) == 16
    assert headers["x-amz-date"].endswith("Z")
    assert headers["x-amz-content-sha256"] == hashlib.sha256(body).hexdigest()
    signature = authorization.split("Signature=")[1]
    assert signature == sigv4_signature(
        "POST", "/api/chat/stream", headers, signed, body, SECRET_KEY, "eu-west-2", "lambda"
    )
    assert SECRET_KEY not in output


def test_iam_with_an_explicit_region(function_url: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, "http://chat.example.test/", "--auth", "iam", "--region", "ap-south-1")
    assert code == 0, output
    [(_, headers, _)] = function_url.seen
    assert "/ap-south-1/lambda/aws4_request" in headers["authorization"]


def test_iam_without_a_region_says_how_to_give_one(function_url: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    code, output = run_smoke(capsys, "http://chat.example.test/", "--auth", "iam")
    assert code == 1
    assert "smoke test FAILED: cannot tell the AWS region from chat.example.test; pass --region" in output
    assert function_url.seen == []


def test_iam_without_credentials_fails_clearly(
    function_url: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, output = run_smoke(capsys, "http://x.lambda-url.us-east-1.on.aws/", "--auth", "iam")
    assert code == 1
    assert "smoke test FAILED: --auth iam needs AWS credentials" in output


def test_a_stream_that_stops_before_done_fails(
    function_url: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A function killed mid-answer (timeout, crash) ends the body without `[DONE]` or an error event."""
    function_url.body = b"event:message\ndata:half an ans\n\n"
    code, output = run_smoke(capsys, "http://x.lambda-url.us-east-1.on.aws/")
    assert code == 1
    assert "smoke test FAILED: the stream ended without the final [DONE] message (cut off?)" in output
