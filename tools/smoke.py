"""Smoke test a running chat stream: ask one question and check the whole SSE answer.

CI runs it after every deploy; a person can run it against any deployment or `make run`:

    python -m tools.smoke https://<id>.lambda-url.<region>.on.aws/ --auth iam
    python -m tools.smoke "$URL" --auth token --token-secret <AuthTokenSecretArn>
    python -m tools.smoke http://127.0.0.1:8080

It passes (exit 0) when the answer is 200 `text/event-stream` with at least one
`message` event, ends with `[DONE]`, and has no `error` event; it prints time to
first byte, time to the first message and total time. Anything else exits 1 with
one line saying what went wrong. The bearer token is never printed; under GitHub
Actions it is registered with `::add-mask::` first so no later step can leak it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import boto3
import botocore.session
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import BotoCoreError, ClientError
from httpx_sse import EventSource

from chat.secrets import secret_value

ENDPOINT_PATH = "/api/chat/stream"
FUNCTION_URL_HOST = re.compile(r"\.lambda-url\.([a-z0-9-]+)\.on\.aws$")
DONE = "[DONE]"
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class SmokeFailure(Exception):
    """The deployment did not answer the way a client needs; the message says how."""


@dataclass
class Answer:
    """What the smoke request saw, with timings in seconds from sending it."""

    first_byte: float = 0.0
    first_message: float | None = None
    total: float = 0.0
    events: list[tuple[str, str]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(data for event, data in self.events if event == "message" and data != DONE)


def endpoint(url: str) -> str:
    """Accept the stack's FunctionUrl output as it is, or the full endpoint."""
    return url if urlsplit(url).path.endswith(ENDPOINT_PATH) else url.rstrip("/") + ENDPOINT_PATH


def region_from(url: str) -> str | None:
    match = FUNCTION_URL_HOST.search(urlsplit(url).hostname or "")
    return match.group(1) if match else None


def token_from_secret(secret_id: str, region: str | None) -> str:
    """The stack's auth-token secret, read by the service's own rules: JSON `{"token": ...}`, or a bare value."""
    try:
        value = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError) as error:
        raise SmokeFailure(f"could not read the token secret {secret_id}: {error}") from None
    try:
        return secret_value(value, "token")
    except ValueError as problem:
        raise SmokeFailure(f"the token secret {secret_id} is {problem} (the service needs it too)") from None


def sigv4_headers(url: str, body: bytes, headers: dict[str, str], region: str) -> dict[str, str]:
    """Sign for Lambda Function URLs (AuthType AWS_IAM) with the standard credential chain."""
    credentials = botocore.session.get_session().get_credentials()
    if credentials is None:
        raise SmokeFailure("--auth iam needs AWS credentials (environment, profile or role); none were found")
    signed = {**headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}
    request = AWSRequest(method="POST", url=url, data=body, headers=signed)
    SigV4Auth(credentials, "lambda", region).add_auth(request)
    return dict(request.headers.items())


def ask(url: str, headers: dict[str, str], body: bytes) -> Answer:
    """POST once and read the stream to its end, timing it."""
    answer = Answer()
    started = time.perf_counter()
    with httpx.Client(timeout=TIMEOUT) as client, client.stream("POST", url, content=body, headers=headers) as response:
        answer.first_byte = time.perf_counter() - started
        if response.status_code != 200:
            detail = response.read().decode("utf-8", "replace").strip()[:300]
            raise SmokeFailure(f"expected status 200, got {response.status_code}: {detail or '(empty body)'}")
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise SmokeFailure(f"expected Content-Type text/event-stream, got {content_type!r}")
        for event in EventSource(response).iter_sse():
            if answer.first_message is None and event.event == "message":
                answer.first_message = time.perf_counter() - started
            answer.events.append((event.event, event.data))
    answer.total = time.perf_counter() - started
    return answer


def check(answer: Answer) -> None:
    errors = [data for event, data in answer.events if event == "error"]
    if errors:
        raise SmokeFailure(f"the stream ended with an error event: {errors[0]}")
    messages = [data for event, data in answer.events if event == "message"]
    if not messages or messages == [DONE]:
        raise SmokeFailure("the stream carried no answer: no message event before [DONE]")
    if messages[-1] != DONE:
        raise SmokeFailure("the stream ended without the final [DONE] message (cut off?)")


def smoke(url: str, *, auth: str, token: str, region: str | None, message: str) -> Answer:
    url = endpoint(url)
    body = json.dumps({"message": message}).encode()
    headers = {"content-type": "application/json", "accept": "text/event-stream"}
    if auth == "token":
        headers["authorization"] = f"Bearer {token}"
    elif auth == "iam":
        signing_region = region or region_from(url)
        if signing_region is None:
            raise SmokeFailure(f"cannot tell the AWS region from {urlsplit(url).hostname}; pass --region")
        headers = sigv4_headers(url, body, headers, signing_region)
    try:
        answer = ask(url, headers, body)
    except httpx.HTTPError as error:
        raise SmokeFailure(f"request to {url} failed: {type(error).__name__}: {error}") from None
    check(answer)
    return answer


def resolve_token(args: argparse.Namespace) -> str:
    if args.auth != "token":
        return ""
    if args.token_secret:
        token = token_from_secret(args.token_secret, args.region or region_from(args.url))
    elif args.token_env:
        token = os.environ.get(args.token_env, "")
    else:
        raise SmokeFailure("--auth token needs --token-env VAR or --token-secret ARN")
    if not token:
        raise SmokeFailure(f"the token from {args.token_env or args.token_secret} is empty")
    if os.environ.get("GITHUB_ACTIONS") == "true":
        print(f"::add-mask::{token}", flush=True)
    return token


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.smoke", description=__doc__.split("\n")[0])
    parser.add_argument("url", help="the stack's FunctionUrl (or ApiUrl), or the full .../api/chat/stream endpoint")
    parser.add_argument("--auth", choices=["none", "token", "iam"], default="none", help="how to authenticate")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--token-env", metavar="VAR", help="environment variable holding the bearer token")
    source.add_argument("--token-secret", metavar="ARN", help="Secrets Manager secret holding {'token': ...}")
    parser.add_argument("--region", help="AWS region (default: from the Function URL host)")
    parser.add_argument("--message", default="Reply with one short sentence.", help="the question to ask")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    token = ""
    try:
        token = resolve_token(args)
        answer = smoke(args.url, auth=args.auth, token=token, region=args.region, message=args.message)
    except SmokeFailure as failure:
        reason = str(failure).replace(token, "***") if token else str(failure)
        print(f"smoke test FAILED: {reason}", file=sys.stderr)
        return 1
    messages = sum(1 for event, data in answer.events if event == "message" and data != DONE)
    first = f"{answer.first_message:.3f} s" if answer.first_message is not None else "-"
    print(f"smoke test passed: {endpoint(args.url)} answered 200 text/event-stream, {messages} message events, [DONE]")
    print(f"time to first byte {answer.first_byte:.3f} s, to first message {first}, total {answer.total:.3f} s")
    print(f"answer: {answer.text[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
