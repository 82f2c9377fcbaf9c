"""Secrets the service needs at request time: the OpenAI key and the client bearer token.

Each comes from an environment variable or a Secrets Manager secret read through
Powertools `get_secret`, whose cache (`max_age`, CHAT_SECRET_CACHE_SECONDS) is the
only one. A miss calls boto3, which blocks, so every read runs in a worker thread,
and concurrent reads share one; `refresh` (after a 401) skips the cache. A secret
that cannot be read is reported as `SecretUnavailable` (a 503), never as a crash.
"""

from __future__ import annotations

import asyncio
import json
import weakref

from .observability import logger


class SecretUnavailable(Exception):
    """The secret could not be read now; the message is safe to show a client."""


class SecretSource:
    """One secret: a fixed value, or a Secrets Manager secret (bare string or JSON field)."""

    def __init__(self, *, value: str = "", secret_id: str, json_field: str, ttl: int) -> None:
        self._value = value
        self._secret_id = secret_id
        self._json_field = json_field
        self._ttl = ttl
        self._seen = ""  # the last value read: not a cache, only for redaction
        self._inflight: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[str]] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def configured(self) -> bool:
        return bool(self._value or self._secret_id)

    @property
    def rotatable(self) -> bool:
        """Whether asking again may give a different value (a secret, not a fixed value)."""
        return not self._value and bool(self._secret_id)

    def known_values(self) -> tuple[str, ...]:
        """Values seen so far, for redaction."""
        return tuple(value for value in (self._value, self._seen) if value)

    async def get(self, *, refresh: bool = False) -> str:
        if self._value:
            return self._value
        loop = asyncio.get_running_loop()
        task = self._inflight.get(loop)
        if task is None:
            task = loop.create_task(self._load(refresh))
            self._inflight[loop] = task
            task.add_done_callback(lambda _: self._inflight.pop(loop, None))
        return await asyncio.shield(task)

    async def _load(self, refresh: bool) -> str:
        self._seen = await asyncio.to_thread(self._fetch, refresh)
        return self._seen

    def _fetch(self, refresh: bool) -> str:
        from aws_lambda_powertools.utilities.parameters import get_secret

        try:
            raw = get_secret(self._secret_id, max_age=self._ttl, force_fetch=refresh)
        except Exception as error:  # boto3 raises many types: all mean "not now"
            logger.error(
                "could not read secret",
                secret_id=self._secret_id,
                error_type=type(error).__name__,
                error_code=_aws_error_code(error),
            )
            raise SecretUnavailable("A secret the service needs could not be read; try again later.") from None
        return self._parse(raw)

    def _parse(self, raw: object) -> str:
        try:
            return secret_value(raw, self._json_field)
        except ValueError as problem:
            logger.error(f"secret is {problem}", secret_id=self._secret_id, field=self._json_field)
            raise SecretUnavailable(f"A secret the service needs is {problem}.") from None


def secret_value(raw: object, json_field: str = "") -> str:
    """What a stored secret holds: a JSON object's string `json_field`, else the whole text, stripped.

    Raises ValueError saying "malformed" or "empty" (never the value). The smoke test
    reads the auth-token secret with this too, so both agree on what the secret may hold.
    """
    text = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
    if json_field and text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        value = data.get(json_field) if isinstance(data, dict) else None
        if not isinstance(value, str) or not value:
            raise ValueError("malformed")
        return value
    if not text:
        raise ValueError("empty")
    return text


def _aws_error_code(error: BaseException) -> str:
    """The AWS error code (e.g. ResourceNotFoundException) from a boto3 error or its cause."""
    for candidate in (error, error.__cause__, error.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code", ""))
    return ""
