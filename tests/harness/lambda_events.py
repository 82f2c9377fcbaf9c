"""Lambda events as AWS sends them for `POST /api/chat/stream`, and the LambdaContext for built-package scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

URL_ID = "abcdefghijklmnopqrstuvwxyz012345"


def function_url_event(
    body: object,
    headers: dict[str, str] | None = None,
    *,
    method: str = "POST",
    path: str = "/api/chat/stream",
    caller_arn: str | None = None,
) -> dict[str, Any]:
    """A Function URL (payload 2.0) event, as in the AWS docs' example; `body=None` sends none.

    `caller_arn`: the IAM principal Lambda verified (AuthType AWS_IAM), in `requestContext.authorizer`."""
    domain = f"{URL_ID}.lambda-url.eu-west-1.on.aws"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "host": domain, **(headers or {})},
        "requestContext": {
            "accountId": "anonymous",
            "apiId": URL_ID,
            "domainName": domain,
            "domainPrefix": URL_ID,
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "curl/8.5.0",
            },
            "requestId": "c7a1f1b5-0000-4000-8000-000000000001",
            "routeKey": "$default",
            "stage": "$default",
            "time": "25/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1795608000000,
        },
        "isBase64Encoded": False,
    }
    if body is not None:
        event["body"] = json.dumps(body)
    if caller_arn is not None:
        event["requestContext"]["authorizer"] = {"iam": {"userArn": caller_arn, "accountId": "123456789012"}}
    return event


def rest_event(body: object, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """An API Gateway REST (proxy, payload 1.0) event."""
    all_headers = {
        "Content-Type": "application/json",
        "Host": "abc123.execute-api.eu-west-1.amazonaws.com",
        **(headers or {}),
    }
    return {
        "resource": "/api/chat/stream",
        "path": "/api/chat/stream",
        "httpMethod": "POST",
        "headers": all_headers,
        "multiValueHeaders": {name: [value] for name, value in all_headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "httpMethod": "POST",
            "path": "/Prod/api/chat/stream",
            "protocol": "HTTP/1.1",
            "requestId": "c7a1f1b5-0000-4000-8000-000000000002",
            "resourceId": "res123",
            "resourcePath": "/api/chat/stream",
            "stage": "Prod",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "curl/8.5.0"},
        },
        "body": json.dumps(body),
        "isBase64Encoded": False,
    }


def split_streamed(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A streamed HTTP integration response: (prelude JSON, body after the 8 NUL bytes)."""
    prelude, separator, body = payload.partition(b"\0" * 8)
    assert separator, "no 8-NUL delimiter after the prelude"
    metadata = json.loads(prelude)
    assert isinstance(metadata, dict)
    return metadata, body


# Lines that bind `context` to the runtime's own LambdaContext, built from Runtime API headers as the
# loop builds it, for scripts python3.13 runs against a built package (they see only the package; one
# without the chat package, the benchmark's baseline, finds it in the source tree, last on the path).
CONTEXT_SOURCE = f"""
import sys, time
sys.path.append({str(Path(__file__).resolve().parents[2] / "functions" / "chat")!r})
from chat.runtime.context import LambdaContext
context = LambdaContext.from_headers({{
    "lambda-runtime-aws-request-id": "local",
    "lambda-runtime-deadline-ms": str(int(time.time() * 1000) + 30000),
    "lambda-runtime-invoked-function-arn": "arn:aws:lambda:us-east-1:123456789012:function:chat",
}})
"""
