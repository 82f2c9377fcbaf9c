"""API keys (as hashes) and token counters, kept in the store `CHAT_STORE_URL` names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Counter, KeyExists, KeyRecord, Ledger, LedgerError, LedgerUnavailable

SQLITE, DYNAMODB = "sqlite:///", "dynamodb://"

__all__ = ["Counter", "KeyExists", "KeyRecord", "Ledger", "LedgerError", "LedgerUnavailable", "open_ledger"]


def open_ledger(url: str, dynamodb_client: Callable[[], Any] | None = None) -> Ledger | None:
    """The ledger in the store `url` names (nothing connects before the first call); None for `none`.

    `dynamodb_client` shares the conversation store's boto3 client: one client to build per
    instance, and the one the store rebuilds after a SnapStart restore."""
    if url == "none":
        return None
    if url.startswith(SQLITE) and len(url) > len(SQLITE):
        from .sqlite import SQLiteLedger

        return SQLiteLedger(Path(url[len(SQLITE) :]))
    if url.startswith(DYNAMODB) and len(url) > len(DYNAMODB) and "/" not in url[len(DYNAMODB) :]:
        from .dynamodb import DynamoDBLedger

        return DynamoDBLedger(url[len(DYNAMODB) :], dynamodb_client)
    raise ValueError(f"CHAT_STORE_URL must be sqlite:///<path>, dynamodb://<table> or none, got {url!r}")
