"""Who is calling (`CHAT_AUTH`), from what the platform or the store verified, never from the body.

- `none` (the local default): `caller.caller_identity`: one identity, `local` (or a
  verified IAM principal when the event carries one); while the stack's single bearer
  token is configured (`CHAT_AUTH_TOKEN_SECRET_ID`), `default` for whoever sends it.
- `keys`: `Authorization: Bearer <key>`, looked up by its hash (`keys.KeyLookup`);
  the key's name is the caller. The stack's generated token keeps working as the key
  named `default`: it is compared, in constant time, with the token secret itself, so
  rotating the secret rotates it.
- `iam`: the IAM principal Lambda's Function URL or API Gateway verified (SigV4).

Callers without budgets of their own get the configured defaults.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.requests import Request

from .budgets import Limits
from .caller import TOKEN_IDENTITY, caller_identity, iam_principal
from .config import Settings
from .keys import KEY_PREFIX, KeyLookup
from .ledger import LedgerUnavailable
from .secrets import SecretSource, SecretUnavailable


@dataclass(frozen=True)
class Caller:
    name: str
    limits: Limits


class Rejected(Exception):
    """The request is not let in: a JSON error with this status and headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def _unauthorized(message: str) -> Rejected:
    return Rejected(401, message, {"www-authenticate": "Bearer"})


def bearer(request: Request) -> str:
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    return supplied.strip() if scheme.lower() == "bearer" else ""


class Authenticator:
    def __init__(self, settings: Settings, token: SecretSource, lookup: KeyLookup | None) -> None:
        self._mode = settings.auth
        self._token = token
        self._lookup = lookup
        self._defaults = Limits(settings.budget_tokens_per_day, settings.budget_tokens_per_month)

    async def caller(self, request: Request) -> Caller:
        """The verified caller, or Rejected (401 unknown, 503 when the store or a secret cannot be read)."""
        if self._mode == "iam":
            principal = iam_principal(request.scope)
            if principal is None:
                raise Rejected(401, "This service needs requests signed with AWS SigV4 (CHAT_AUTH=iam).")
            return Caller(principal, self._defaults)
        supplied = bearer(request)
        named_key = self._mode == "keys" and supplied.startswith(KEY_PREFIX)  # never the stack's token
        if self._token.configured and not named_key and await self._is_token(supplied):
            return Caller(TOKEN_IDENTITY, self._defaults)
        if self._mode == "none":
            if self._token.configured:
                raise _unauthorized("Missing or invalid bearer token.")
            return Caller(caller_identity(request.scope, token_auth=False), self._defaults)
        if not supplied or self._lookup is None:
            raise _unauthorized("Missing or invalid API key.")
        try:
            record = await self._lookup.find(supplied)
        except LedgerUnavailable:
            raise Rejected(503, "API keys cannot be checked now; try again later.") from None
        if record is None:
            raise _unauthorized("Missing or invalid API key.")
        return Caller(
            record.name,
            Limits(
                record.tokens_per_day if record.tokens_per_day is not None else self._defaults.tokens_per_day,
                record.tokens_per_month if record.tokens_per_month is not None else self._defaults.tokens_per_month,
            ),
        )

    async def _is_token(self, supplied: str) -> bool:
        try:
            expected = (await self._token.get()).encode()
        except SecretUnavailable as error:
            raise Rejected(503, str(error)) from None
        return bool(supplied) and hmac.compare_digest(supplied.encode(), expected)
