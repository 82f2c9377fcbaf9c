"""The FastAPI application: routes, access control, limits and the error shape.

Every error a client can cause or see is JSON `{"error": "..."}`; the stream
itself is handed to `relay.ChatStream` once the request is known to be valid.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from starlette._utils import get_route_path
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Authenticator, Caller, Rejected
from .budgets import Budgets, OverBudget, Reservation, utc_now
from .chat_request import BadRequest, ChatRequest, parse_chat_request
from .config import ConfigError, Settings
from .conversation import start_turn
from .conversation_api import add_conversation_routes
from .headers import SECURITY_HEADERS_TEXT, SecurityHeaders
from .keys import KeyLookup
from .ledger import LedgerUnavailable, open_ledger
from .observability import logger
from .page import add_page_routes
from .relay import ChatStream, error_response
from .resumable import Resumables
from .resume_api import add_resume_route
from .secrets import SecretSource
from .store import StoreError, open_store
from .store.dynamodb import DynamoDBStore
from .upstream import Upstream
from .usage import Usage, prompt_bound

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
                        "resumable": {
                            "type": "boolean",
                            "description": "With `store` or `conversation_id`: events carry `id:` lines, the answer"
                            " runs on if the client leaves, and `GET /api/conversations/{id}/stream` resumes it.",
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
                (401, "Missing or unknown API key or bearer token (WWW-Authenticate: Bearer)"),
                (404, "Unknown conversation_id (or someone else's)"),
                (409, "An answer is already in progress in this conversation"),
                (413, "Request body too large"),
                (429, "Over a token budget (Retry-After; none when it can never fit), or the model is rate limited"),
                (502, "The model refused or failed"),
                (503, "A secret could not be read, or the conversation store failed"),
                (504, "The model did not answer in time"),
            ]
        },
    },
}


_WINDOW_SCHEMA = {
    "type": "object",
    "required": ["used", "limit", "remaining", "resets_at"],
    "properties": {
        "used": {"type": "integer", "description": "Tokens counted in this UTC window."},
        "limit": {"type": ["integer", "null"], "description": "The budget; null when there is none."},
        "remaining": {"type": ["integer", "null"]},
        "resets_at": {"type": "string", "format": "date-time"},
    },
}
_USAGE_OPENAPI: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The caller's token usage this UTC day and month.",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"day": _WINDOW_SCHEMA, "month": _WINDOW_SCHEMA}}
            }
        },
    },
    **{
        status: {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for status, description in [
            (401, "Missing or unknown API key"),
            (404, "No store: usage is not recorded (CHAT_STORE_URL=none)"),
            (503, "The store cannot be read now"),
        ]
    },
}


_HEALTHZ_OPENAPI = {
    "description": "The service is up.",
    "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}},
}


class JSONRefusalCORS(CORSMiddleware):
    """Starlette's CORS, with its preflight refusal in the service's `{"error": ...}` shape."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        return error_response(response.status_code, bytes(response.body).decode())


CHAT_PATH = "/api/chat/stream"


class ChatRoute:
    """`POST /api/chat/stream` straight to its handler, the other requests on to FastAPI's router.

    The route is declared (and documented) with FastAPI like the others, but its handler
    takes the raw Request and returns a Response, so FastAPI's per-request routing,
    dependency solving, exit stacks and telemetry have nothing to do for it: skipping them
    saves ~0.2 ms of CPU per request. It sits inside CORS, the security headers and
    Starlette's error middleware, so a failure is answered exactly as before.
    """

    def __init__(self, app: ASGIApp, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and get_route_path(scope) == CHAT_PATH:
            response = await self.handler(Request(scope, receive, send))
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


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


def create_app(settings: Settings | None = None, *, clock: Callable[[], datetime.datetime] = utc_now) -> FastAPI:
    """The app; `clock` (UTC now) decides budget windows, and tests move it to cross a window's end."""
    settings = settings or Settings.from_env()
    api_key = SecretSource(
        value=settings.openai_api_key,
        secret_id=settings.openai_api_key_secret_id,
        json_field="OPENAI_API_KEY",
        ttl=settings.secret_cache_seconds,
    )
    upstream = Upstream(settings, api_key)
    token = SecretSource(secret_id=settings.auth_token_secret_id, json_field="token", ttl=settings.secret_cache_seconds)
    store = open_store(settings.store_url)
    ledger = open_ledger(settings.store_url, store.client if isinstance(store, DynamoDBStore) else None)
    if ledger is None and settings.auth == "keys":
        raise ConfigError("CHAT_AUTH=keys needs a store for the keys: set CHAT_STORE_URL")
    auth = Authenticator(settings, token, KeyLookup(ledger, settings.key_cache_seconds) if ledger else None)
    budgets = Budgets(ledger, settings.deployment_tokens_per_day, clock) if ledger else None
    completion_reserve = settings.openai_max_tokens or settings.reserve_completion_tokens

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
    resumables = Resumables(store, settings) if store is not None else None

    async def identify(request: Request) -> Caller | Response:
        """The verified caller, or the 401/503 JSON error refusing the request."""
        try:
            return await auth.caller(request)
        except Rejected as rejection:
            return error_response(rejection.status, rejection.message, rejection.headers)

    async def owner(request: Request) -> str | Response:
        caller = await identify(request)
        return caller if isinstance(caller, Response) else caller.name

    async def reserve(caller: Caller, chat: ChatRequest) -> Reservation | Response | None:
        """Reserve the most the request can use on the caller's budgets, or the 429/503 refusing it."""
        if budgets is None:
            return None
        most = prompt_bound(chat.openai_messages()) + completion_reserve
        try:
            return await budgets.reserve(caller.name, caller.limits, most)
        except OverBudget as refusal:
            wait = {} if refusal.retry_after is None else {"retry-after": str(refusal.retry_after)}
            return error_response(429, refusal.message, wait)
        except LedgerUnavailable:
            return error_response(503, "Token budgets cannot be checked now; try again later.")

    def settlement(reservation: Reservation | None) -> Callable[[Usage], Awaitable[None]] | None:
        if budgets is None or reservation is None:
            return None

        async def settle(usage: Usage) -> None:
            try:
                await budgets.settle(reservation, usage.total_tokens)
            except LedgerUnavailable:
                # The reservation stays counted: the caller is over-charged, never under.
                logger.warning("usage counters could not be reconciled", reserved=reservation.amount)

        return settle

    @app.post(CHAT_PATH, status_code=200, response_class=ChatStream, openapi_extra=_CHAT_OPENAPI)
    async def chat_stream(request: Request) -> Response:
        """Stream the model's answer to `message`, with `history` as earlier turns, or in a stored conversation."""
        caller = await identify(request)
        if isinstance(caller, Response):
            return caller
        turn = journal = None
        try:
            body = await _read_body(request, settings.max_body_bytes)
            chat = parse_chat_request(
                body, max_history_turns=settings.max_history_turns, conversations=store is not None
            )
            if store is not None and chat.stored:
                resumable = chat.resumable
                chat, turn = await start_turn(store, settings, caller.name, chat)
                if resumable and resumables is not None:
                    journal = resumables.journal(caller.name, turn.conversation_id, turn.seq)
        except BadRequest as error:
            return error_response(error.status, error.message)
        except StoreError as error:
            return error_response(503, str(error))
        reservation = await reserve(caller, chat)  # over the whole prompt, stored turns included
        if isinstance(reservation, Response):
            return reservation
        return ChatStream(chat, upstream, settings, caller.name, turn, settlement(reservation), journal)

    @app.get("/api/usage", response_model=None, responses=_USAGE_OPENAPI)
    async def usage(request: Request) -> Response:
        """The caller's tokens used, budget and reset time, for this UTC day and month."""
        caller = await identify(request)
        if isinstance(caller, Response):
            return caller
        if budgets is None:
            return error_response(404, "Usage is not recorded: this deployment has no store (CHAT_STORE_URL=none).")
        try:
            report = await budgets.report(caller.name, caller.limits)
        except LedgerUnavailable:
            return error_response(503, "Usage cannot be read now; try again later.")
        return Response(json.dumps(report, separators=(",", ":")).encode(), media_type="application/json")

    # A plain response, not a return-type model: FastAPI would build a pydantic field for the
    # model at import (and import pydantic.v1 to check its kind), ~25 ms of every cold start.
    @app.get("/healthz", response_model=None, responses={200: _HEALTHZ_OPENAPI})
    async def healthz() -> Response:
        """Liveness: answers without calling the model."""
        return Response(b'{"status":"ok"}', media_type="application/json")

    add_page_routes(app, store=store, caller=owner)
    if store is not None and resumables is not None:
        add_conversation_routes(app, store, owner)
        add_resume_route(app, resumables, owner)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        return error_response(error.status_code, str(error.detail), dict(error.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unhandled error")
        # Starlette answers this from its outermost layer, outside SecurityHeaders.
        return error_response(500, "Internal server error", SECURITY_HEADERS_TEXT)

    app.add_middleware(ChatRoute, handler=chat_stream)  # added first = innermost: inside CORS and the headers
    if settings.cors_allow_origins:
        app.add_middleware(
            JSONRefusalCORS,
            allow_origins=list(settings.cors_allow_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "content-type", "last-event-id"],
            # What a client elsewhere must read: the conversation to continue, and how long to wait.
            expose_headers=["x-conversation-id", "retry-after"],
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
