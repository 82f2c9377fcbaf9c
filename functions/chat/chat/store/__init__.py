"""Durable state behind one small interface (`base.Store`), with a SQLite and a DynamoDB backend.

`open_store(url)` picks the backend from `CHAT_STORE_URL`; nothing is opened or
imported (boto3) until the first call that needs it, so a cold start pays nothing.
"""

from __future__ import annotations

from .base import (
    BadCursor,
    Conversation,
    ConversationSummary,
    Message,
    Page,
    Store,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    TurnEnd,
    TurnStart,
)
from .factory import open_store

__all__ = [
    "BadCursor",
    "Conversation",
    "ConversationSummary",
    "Message",
    "Page",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "TurnEnd",
    "TurnStart",
    "open_store",
]
