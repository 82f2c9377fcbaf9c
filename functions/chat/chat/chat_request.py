"""Parsing and validating the body of `POST /api/chat/stream`.

Validation is hand-written rather than a pydantic model because the contract fixes
the error body byte for byte (`{"error":"Invalid request body"}`) for every shape
of bad input, and FastAPI's validation errors would echo the input back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

ROLES = frozenset({"user", "assistant", "system"})
INVALID_BODY = "Invalid request body"


class BadRequest(ValueError):
    """The client sent a body the service will not forward; the message is safe to show."""

    def __init__(self, message: str = INVALID_BODY, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclass(frozen=True)
class ChatRequest:
    message: str
    history: tuple[Turn, ...] = ()
    store: bool = False
    """Start a new stored conversation with this message."""
    conversation_id: str | None = None
    """Continue this stored conversation (its turns become the history)."""
    resumable: bool = False
    """Keep the answer's events so a client can reconnect to it (stored conversations only)."""

    @property
    def stored(self) -> bool:
        return self.store or self.conversation_id is not None

    def openai_messages(self) -> list[dict[str, str]]:
        """The conversation as the Chat Completions API wants it: history, then the message."""
        turns = [{"role": turn.role, "content": turn.content} for turn in self.history]
        turns.append({"role": "user", "content": self.message})
        return turns


def _encodable(text: str, where: str) -> str:
    """JSON may carry lone surrogates (`"\\ud800"`); no model can be sent them, so say so now."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{where} contains an unpaired UTF-16 surrogate; send valid Unicode text") from None
    return text


def _turn(item: object, index: int) -> Turn:
    if not isinstance(item, dict):
        raise BadRequest(f"history[{index}] must be an object with role and content")
    role, content = item.get("role"), item.get("content")
    if role not in ROLES:
        raise BadRequest(f"history[{index}].role must be one of: assistant, system, user")
    if not isinstance(content, str):
        raise BadRequest(f"history[{index}].content must be a string")
    return Turn(role=str(role), content=_encodable(content, f"history[{index}].content"))


def _conversation_fields(data: dict[str, object]) -> tuple[bool, str | None, bool]:
    store, conversation_id = data.get("store", False), data.get("conversation_id")
    resumable = data.get("resumable", False)
    if not isinstance(resumable, bool):
        raise BadRequest("resumable must be true or false")
    if resumable and not store and conversation_id is None:
        raise BadRequest("resumable needs a stored conversation: send store or conversation_id with it")
    if not isinstance(store, bool):
        raise BadRequest("store must be true or false")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise BadRequest("conversation_id must be a string")
    if store and conversation_id is not None:
        raise BadRequest("Send store to start a conversation, or conversation_id to continue one, not both")
    if data.get("history") is not None and (store or conversation_id is not None):
        raise BadRequest(
            "history cannot be combined with store or conversation_id: a stored conversation's turns are its history"
        )
    return store, conversation_id, resumable


def parse_chat_request(body: bytes, *, max_history_turns: int, conversations: bool = False) -> ChatRequest:
    """Turn raw body bytes into a ChatRequest, or raise BadRequest with a client-safe message.

    With `conversations` off (no store), `store` and `conversation_id` are ignored like any
    other unknown field: the service is exactly the stateless one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest() from None
    if not isinstance(data, dict):
        raise BadRequest()
    message = data.get("message")
    if not isinstance(message, str) or not message:
        raise BadRequest()
    _encodable(message, "message")
    if conversations:
        store, conversation_id, resumable = _conversation_fields(data)
        if store or conversation_id is not None:
            return ChatRequest(message=message, store=store, conversation_id=conversation_id, resumable=resumable)
    history = data.get("history")
    if history is None:
        return ChatRequest(message=message)
    if not isinstance(history, list):
        raise BadRequest("history must be a list of {role, content} objects")
    if len(history) > max_history_turns:
        raise BadRequest(
            f"history has {len(history)} turns; the limit is {max_history_turns}. "
            "Drop or summarise older turns and try again."
        )
    return ChatRequest(message=message, history=tuple(_turn(item, i) for i, item in enumerate(history)))
