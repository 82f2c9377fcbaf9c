"""API keys: how they are made, stored (a SHA-256 hash, never the key) and looked up per request.

A key is 256 random bits (`secrets.token_urlsafe(32)`) behind a recognisable prefix.
Its SHA-256 is what the store holds and what a request is looked up by. A slow,
salted hash (bcrypt, scrypt, argon2) exists to make guessing low-entropy passwords
expensive; nobody can enumerate 2^256 keys at any hash speed, and a lookup by hash
needs the hash to be deterministic, i.e. unsalted. The hash found is compared with
the one computed in constant time.

Lookups are cached for `CHAT_KEY_CACHE_SECONDS`, positive and negative: a request
with a key costs no store call while cached, and a disabled or deleted key stops
working within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable

from .ledger import KeyRecord, Ledger

KEY_PREFIX = "csk_"
NAME_RULE = "1-64 characters: letters, digits, '.', '_', '-', starting with a letter or digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_NAMES = frozenset({"default", "local"})
"""`default` is the stack's generated token, `local` the identity of an unauthenticated local run."""
CACHE_ENTRIES = 10_000


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


class KeyLookup:
    """Finds the enabled key record for a presented key, through a short-lived cache."""

    def __init__(self, ledger: Ledger, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ledger = ledger
        self._ttl = ttl
        self._clock = clock
        self._cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def find(self, key: str) -> KeyRecord | None:
        """The key's record when it exists and is enabled, else None (LedgerUnavailable when the store fails)."""
        digest = key_hash(key)
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            record = cached[1]
        else:
            record = await self._ledger.find_key(digest)
            if len(self._cache) >= CACHE_ENTRIES:  # random keys must not grow memory without bound
                for stale in list(self._cache)[: CACHE_ENTRIES // 2]:
                    del self._cache[stale]
            self._cache[digest] = (now + self._ttl, record)
        if record is None or record.disabled or not hmac.compare_digest(record.key_hash, digest):
            return None
        return record

    def forget(self) -> None:
        self._cache.clear()
