"""Who is asking, from what the platform verified, never from the request body.

- With `AuthMode=TOKEN` (a bearer token is configured): "default", the one identity
  every holder of the one token shares.
- On Lambda with IAM auth: the IAM principal the Function URL
  (`requestContext.authorizer.iam.userArn`) or the REST API
  (`requestContext.identity.userArn`) checked; mangum puts the event in `scope["aws.event"]`.
- Otherwise (uvicorn, `make run`, `sam local` without IAM): the fixed identity "local".

Conversations and usage records are keyed by this string. With `CHAT_AUTH=keys` the
caller is the API key's name instead (`auth.Authenticator`, which uses these for the
other modes).
"""

from __future__ import annotations

from starlette.types import Scope

TOKEN_IDENTITY = "default"  # noqa: S105 (an identity's name, not a secret)
LOCAL_IDENTITY = "local"


def iam_principal(scope: Scope) -> str | None:
    """The IAM principal the Function URL or the REST API verified, if the request came through one."""
    event = scope.get("aws.event")
    context = event.get("requestContext") if isinstance(event, dict) else None
    if not isinstance(context, dict):
        return None
    iam = (context.get("authorizer") or {}).get("iam") or context.get("identity") or {}
    arn = iam.get("userArn") if isinstance(iam, dict) else None
    return arn if isinstance(arn, str) and arn else None


def caller_identity(scope: Scope, *, token_auth: bool) -> str:
    if token_auth:
        return TOKEN_IDENTITY
    return iam_principal(scope) or LOCAL_IDENTITY
