"""The FastAPI application: routes, access control, limits and the error shape.

Every error a client can cause or see is JSON `{"error": "..."}`; the stream
itself is handed to `relay.ChatStream` once the request is known to be valid.
"""

from __future__ import annotations

import hmac

from fastapi import FastAPI, Request
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from .caller import caller_identity
from .chat_request import BadRequest, parse_chat_request
from .config import Settings
from .conversation import start_turn
from .conversation_api import add_conversation_routes
from .headers import SECURITY_HEADERS_TEXT, SecurityHeaders
from .observability import logger
from .page import add_page_routes
from .relay import ChatStream, error_response
from .secrets import SecretSource, SecretUnavailable
from .store import StoreError, open_store
from .upstream import Upstream

_CHAT_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string", "minLength": 1},
                        "history": {
                            "type": "array",
                            "description": "Earlier turns, oldest first, sent before the message.",
                            "items": {
                                "type": "object",
                                "required": ["role", "content"],
                                "properties": {
                                    "role": {"type": "string", "enum": ["user", "assistant", "system"]},
                                    "content": {"type": "string"},
                                },
                            },
                        },
                        "store": {
                            "type": "boolean",
                            "description": "Start a new stored conversation with this message; its id is in the"
                            " `X-Conversation-Id` response header.",
                        },
                        "conversation_id": {
                            "type": "string",
                            "description": "Continue this stored conversation: its turns are the context, and the"
                            " message and answer are appended. Not together with `history` or `store`.",
                        },
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "`event:message` per delta, then `data:[DONE]`; `event:error` on failure.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "headers": {
                "X-Conversation-Id": {
                    "description": "The stored conversation's id (requests with `store` or `conversation_id`).",
                    "schema": {"type": "string"},
                }
            },
        },
        **{
            str(status): {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            for status, description in [
                (400, "Invalid request body"),
                (401, "Missing or wrong bearer token"),
                (404, "Unknown conversation_id (or someone else's)"),
                (409, "An answer is already in progress in this conversation"),
                (413, "Request body too large"),
                (429, "The model is rate limited (Retry-After when it said)"),
                (502, "The model refused or failed"),
                (503, "A secret could not be read, or the conversation store failed"),
                (504, "The model did not answer in time"),
            ]
        },
    },
}


_HEALTHZ_OPENAPI = {
    "description": "The service is up.",
    "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}},
}


class _BearerToken:
    """Checks `Authorization: Bearer <token>` against a secret, in constant time."""

    def __init__(self, token: SecretSource) -> None:
        self._token = token

    async def rejection(self, request: Request) -> Response | None:
        try:
            expected = (await self._token.get()).encode()
        except SecretUnavailable as error:
            return error_response(503, str(error))
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(supplied.strip().encode(), expected):
            return None
        return error_response(401, "Missing or invalid bearer token.", {"www-authenticate": "Bearer"})


class JSONRefusalCORS(CORSMiddleware):
    """Starlette's CORS, with its preflight refusal in the service's `{"error": ...}` shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        return error_response(response.status_code, bytes(response.body).decode())


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it is known to exceed `limit` bytes."""
    too_large = BadRequest(f"Request body too large: the limit is {limit} bytes.", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    api_key = SecretSource(
        value=settings.openai_api_key,
        secret_id=settings.openai_api_key_secret_id,
        json_field="OPENAI_API_KEY",
        ttl=settings.secret_cache_seconds,
    )
    upstream = Upstream(settings, api_key)
    token = SecretSource(secret_id=settings.auth_token_secret_id, json_field="token", ttl=settings.secret_cache_seconds)
    auth = _BearerToken(token) if token.configured else None
    store = open_store(settings.store_url)

    app = FastAPI(
        title="chat-stream",
        summary="Streams an OpenAI-compatible model's answer as Server-Sent Events.",
        docs_url=None,
        redoc_url=None,
        # A trailing slash is a 404 like any other unknown path, not a redirect (`/api/conversations/` is
        # an empty id, and a redirect would send a client's body and token to a path it did not ask for).
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.upstream = upstream
    app.state.store = store

    async def authenticate(request: Request) -> Response | None:
        return None if auth is None else await auth.rejection(request)

    @app.post("/api/chat/stream", status_code=200, response_class=ChatStream, openapi_extra=_CHAT_OPENAPI)
    async def chat_stream(request: Request) -> Response:
        """Stream the model's answer to `message`, with `history` as earlier turns, or in a stored conversation."""
        rejection = await authenticate(request)
        if rejection is not None:
            return rejection
        caller = caller_identity(request.scope, token_auth=auth is not None)
        turn = None
        try:
            body = await _read_body(request, settings.max_body_bytes)
            chat = parse_chat_request(
                body, max_history_turns=settings.max_history_turns, conversations=store is not None
            )
            if store is not None and chat.stored:
                chat, turn = await start_turn(store, settings, caller, chat)
        except BadRequest as error:
            return error_response(error.status, error.message)
        except StoreError as error:
            return error_response(503, str(error))
        return ChatStream(chat, upstream, settings, caller, turn)

    # A plain response, not a return-type model: FastAPI would build a pydantic field for the
    # model at import (and import pydantic.v1 to check its kind), ~25 ms of every cold start.
    @app.get("/healthz", response_model=None, responses={200: _HEALTHZ_OPENAPI})
    async def healthz() -> Response:
        """Liveness: answers without calling the model."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    add_page_routes(app)
    if store is not None:
        add_conversation_routes(app, store, authenticate, token_auth=auth is not None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error")
        # Starlette answers this from its outermost layer, outside SecurityHeaders.
        return error_response(500, "Internal server error", SECURITY_HEADERS_TEXT)

    if settings.cors_allow_origins:
        app.add_middleware(
            JSONRefusalCORS,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type"],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)  # added last = outermost: CORS preflight answers get them too
    _add_error_schema(app)
    return app


def _add_error_schema(app: FastAPI) -> None:
    """Declare the `{"error": "..."}` shape once, so every documented error refers to it."""
    original = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {})["Error"] = {
                "type": "object",
                "required": ["error"],
                "properties": {"error": {"type": "string"}},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
