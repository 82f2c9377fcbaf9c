"""The LambdaContext handed to the app, built as awslambdaric builds it.

Powertools, mangum and the relay read it (`aws_request_id`, `function_name`,
`get_remaining_time_in_millis()` ...), so it must match the managed runtime's
object attribute for attribute.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ContextError(ValueError):
    """A Runtime API header that should hold JSON does not (Runtime.LambdaContextUnmarshalError)."""


@dataclass(frozen=True)
class CognitoIdentity:
    cognito_identity_id: str | None = None
    cognito_identity_pool_id: str | None = None


@dataclass(frozen=True)
class MobileClient:
    installation_id: str | None = None
    app_title: str | None = None
    app_version_name: str | None = None
    app_version_code: str | None = None
    app_package_name: str | None = None


@dataclass(frozen=True)
class ClientContext:
    client: MobileClient | None
    custom: Any
    env: Any


class LambdaContext:
    def __init__(
        self,
        *,
        aws_request_id: str,
        deadline_ms: int,
        invoked_function_arn: str,
        tenant_id: str | None = None,
        client_context: ClientContext | None = None,
        identity: CognitoIdentity | None = None,
    ) -> None:
        self.aws_request_id = aws_request_id
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self.client_context = client_context
        self.identity = identity or CognitoIdentity()
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, message: str) -> None:
        logging.getLogger().info(message)

    def __repr__(self) -> str:
        return (
            f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r}, "
            f"invoked_function_arn={self.invoked_function_arn!r}, deadline_ms={self._deadline_ms})"
        )

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> LambdaContext:
        """Build from `/next` response headers (names matched case-insensitively by the caller)."""
        cognito = _json_header(headers, "lambda-runtime-cognito-identity")
        client = _json_header(headers, "lambda-runtime-client-context")
        return cls(
            aws_request_id=headers["lambda-runtime-aws-request-id"],
            deadline_ms=int(headers.get("lambda-runtime-deadline-ms") or 0),
            invoked_function_arn=headers.get("lambda-runtime-invoked-function-arn", ""),
            tenant_id=headers.get("lambda-runtime-aws-tenant-id") or None,
            client_context=_client_context(client),
            identity=CognitoIdentity(
                cognito_identity_id=cognito.get("cognitoIdentityId"),
                cognito_identity_pool_id=cognito.get("cognitoIdentityPoolId"),
            ),
        )


def _json_header(headers: Mapping[str, str], name: str) -> dict[str, Any]:
    raw = headers.get(name)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ContextError(f"Unable to parse {name} JSON") from None
    if not isinstance(value, dict):
        raise ContextError(f"{name} is not a JSON object")
    return value


def _client_context(raw: dict[str, Any]) -> ClientContext | None:
    if not raw:
        return None
    client = raw.get("client")
    return ClientContext(
        client=MobileClient(
            installation_id=client.get("installation_id"),
            app_title=client.get("app_title"),
            app_version_name=client.get("app_version_name"),
            app_version_code=client.get("app_version_code"),
            app_package_name=client.get("app_package_name"),
        )
        if isinstance(client, dict)
        else None,
        custom=raw.get("custom"),
        env=raw.get("env"),
    )
