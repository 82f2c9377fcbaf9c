"""The conversation routes: list, read, delete, stop. Every one answers only the caller's own.

An unknown id, a malformed one and someone else's conversation all get the same 404,
so existence never leaks. Bodies are built by hand (no pydantic response models):
FastAPI would build their fields at import, on every cold start.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from .conversation import NOT_FOUND
from .relay import error_response
from .store.base import BadCursor, ConversationSummary, Message, Store, StoreError, valid_id

DEFAULT_LIMIT, MAX_LIMIT = 20, 100

Identify = Callable[[Request], Awaitable[str | Response]]
"""The verified caller's identity (`auth.Authenticator`), or the error response refusing the request."""


async def owned_conversation(request: Request, caller: Identify) -> tuple[str, str] | Response:
    """The caller and the path's conversation id, or the refusal: a malformed id is as unknown as a missing one."""
    owner = await caller(request)
    if isinstance(owner, Response):
        return owner
    conversation_id: str = request.path_params["conversation_id"]
    if not valid_id(conversation_id):
        return error_response(404, NOT_FOUND)
    return owner, conversation_id


def _json(payload: object, status: int = 200) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status, media_type="application/json")


def _summary(conversation: ConversationSummary) -> dict[str, str]:
    return {
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at,
        "updated_at": conversation.updated_at,
    }


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


def _schema(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


_SUMMARY = _schema(
    {name: {"type": "string"} for name in ("id", "title", "created_at", "updated_at")}
    | {"created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}
)
_MESSAGE = _schema(
    {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["complete", "error", "timeout", "stopped", "disconnected", "deadline"],
            "description": "`complete`, or why an answer ended early (its content is the partial answer).",
        },
        "created_at": {"type": "string", "format": "date-time"},
        "usage": {
            "type": "object",
            "description": "Answers only: the tokens used; `source` is `reported` (by the model) or `estimated`.",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "source": {"type": "string", "enum": ["reported", "estimated"]},
            },
        },
    }
)


def _doc(status: int, description: str, schema: dict[str, Any] | None = None) -> dict[int | str, dict[str, Any]]:
    if schema is None:
        return {status: {"description": description}}
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    meaning = {
        400: "Bad query (limit or cursor)",
        401: "Missing or wrong bearer token",
        404: "No such conversation for this caller",
        503: "The conversation store failed",
    }
    error = {"$ref": "#/components/schemas/Error"}
    return {
        status: {"description": meaning[status], "content": {"application/json": {"schema": error}}}
        for status in statuses
    }


# The id is read from `request.path_params`, not a typed parameter: FastAPI would build a pydantic
# field for it at import (and import pydantic.v1), tens of ms of every cold start.
_ID_PARAMETER = {
    "parameters": [{"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}}]
}


def _message(message: Message) -> dict[str, object]:
    shown: dict[str, object] = {
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "created_at": message.created_at,
    }
    if message.usage is not None:  # answers: the tokens they used, reported by the model or estimated
        shown["usage"] = {
            "prompt_tokens": message.usage.prompt_tokens,
            "completion_tokens": message.usage.completion_tokens,
            "source": message.usage.source,
        }
    return shown


async def list_page(store: Store, owner: str, limit: int, cursor: str | None) -> dict[str, object]:
    """One page of the owner's conversations, as `GET /api/conversations` answers it (StoreError if it fails)."""
    page = await store.list_conversations(owner, limit, cursor, time.time())
    return {"conversations": [_summary(c) for c in page.conversations], "next_cursor": page.next_cursor}


def add_conversation_routes(app: FastAPI, store: Store, caller: Identify) -> None:
    """Register the routes (only when a store is configured: with none they answer 404)."""

    @app.get(
        "/api/conversations",
        response_model=None,
        responses=_doc(
            200,
            "The caller's conversations, most recently active first; pass `next_cursor` as `cursor` for more.",
            _schema(
                {
                    "conversations": {"type": "array", "items": _SUMMARY},
                    "next_cursor": {"type": ["string", "null"]},
                }
            ),
        )
        | _errors(400, 401, 503),
        openapi_extra={
            "parameters": [
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}},
                {"name": "cursor", "in": "query", "schema": {"type": "string"}},
            ]
        },
    )
    async def list_conversations(request: Request) -> Response:
        """List the caller's conversations, newest first."""
        owner = await caller(request)
        if isinstance(owner, Response):
            return owner
        try:
            listed = await list_page(store, owner, _limit(request), request.query_params.get("cursor"))
        except (ValueError, BadCursor) as error:
            return error_response(400, str(error))
        except StoreError as error:
            return error_response(503, str(error))
        return _json(listed)

    @app.get(
        "/api/conversations/{conversation_id}",
        response_model=None,
        openapi_extra=_ID_PARAMETER,
        responses=_doc(
            200,
            "The conversation and its messages, oldest first.",
            _schema({**_SUMMARY["properties"], "messages": {"type": "array", "items": _MESSAGE}}),
        )
        | _errors(401, 404, 503),
    )
    async def read_conversation(request: Request) -> Response:
        """One conversation with all its messages."""
        target = await owned_conversation(request, caller)
        if isinstance(target, Response):
            return target
        owner, conversation_id = target
        try:
            conversation = await store.load(owner, conversation_id, time.time())
        except StoreError as error:
            return error_response(503, str(error))
        if conversation is None:
            return error_response(404, NOT_FOUND)
        messages = [_message(m) for m in conversation.messages]
        return _json({**_summary(conversation.summary), "messages": messages})

    @app.delete(
        "/api/conversations/{conversation_id}",
        status_code=204,
        openapi_extra=_ID_PARAMETER,
        response_model=None,
        responses=_doc(204, "Deleted, with all its messages.") | _errors(401, 404, 503),
    )
    async def delete_conversation(request: Request) -> Response:
        """Delete a conversation and everything stored with it."""
        target = await owned_conversation(request, caller)
        if isinstance(target, Response):
            return target
        owner, conversation_id = target
        try:
            found = await store.delete(owner, conversation_id, time.time())
        except StoreError as error:
            return error_response(503, str(error))
        return Response(status_code=204) if found else error_response(404, NOT_FOUND)

    @app.post(
        "/api/conversations/{conversation_id}/stop",
        status_code=202,
        openapi_extra=_ID_PARAMETER,
        response_model=None,
        responses=_doc(202, "The answer in progress was asked to stop; its stream ends within about 2 s.")
        | _doc(204, "No answer was in progress.")
        | _errors(401, 404, 503),
    )
    async def stop_answer(request: Request) -> Response:
        """Stop the conversation's answer in progress, wherever it is streaming."""
        target = await owned_conversation(request, caller)
        if isinstance(target, Response):
            return target
        owner, conversation_id = target
        try:
            result = await store.request_stop(owner, conversation_id, time.time())
        except StoreError as error:
            return error_response(503, str(error))
        if result == "missing":
            return error_response(404, NOT_FOUND)
        return Response(status_code=202 if result == "stopping" else 204)
