"""`CHAT_STORE_URL` -> a store: `sqlite:///<path>`, `dynamodb://<table>`, or `none` (stateless service)."""

from __future__ import annotations

from pathlib import Path

from .base import Store

SQLITE, DYNAMODB = "sqlite:///", "dynamodb://"


class StoreURLError(ValueError):
    """CHAT_STORE_URL names no store this service has."""


def open_store(url: str) -> Store | None:
    """The store `url` names, not yet connected (backends connect on their first call); None for `none`."""
    if url == "none":
        return None
    if url.startswith(SQLITE) and len(url) > len(SQLITE):
        from .sqlite import SQLiteStore

        return SQLiteStore(Path(url[len(SQLITE) :]))
    if url.startswith(DYNAMODB) and len(url) > len(DYNAMODB) and "/" not in url[len(DYNAMODB) :]:
        from .dynamodb import DynamoDBStore

        return DynamoDBStore(url[len(DYNAMODB) :])
    raise StoreURLError(f"CHAT_STORE_URL must be sqlite:///<path>, dynamodb://<table> or none, got {url!r}")
