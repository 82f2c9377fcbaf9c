"""`GET /api/conversations/{id}/stream`: resume a resumable answer after the client's last event id.

Someone else's conversation is the same 404 as an unknown one; a conversation with no
resumable answer in progress or recently finished is a 204.
"""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from starlette.responses import Response

from .conversation import NOT_FOUND
from .conversation_api import Identify, owned_conversation
from .relay import error_response
from .resumable import EventIdAhead, FollowerLimit, FollowStream, Resumables, find, parse_event_id
from .store.base import ConversationNotFound, StoreError

BAD_ID = "Last-Event-ID is not an event id this service sent."
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The answer's events after `Last-Event-ID` (all of them without one), each with its `id:`,"
        " then the live answer until its `[DONE]` or `event:error`.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {
        "description": "No resumable answer is in progress or recently finished in this conversation, or the"
        " client already has its last event."
    },
    400: {"description": "`Last-Event-ID` is not an id this service sent", "content": _ERROR},
    401: {"description": "Missing or wrong credentials", "content": _ERROR},
    404: {"description": "No such conversation for this caller", "content": _ERROR},
    429: {"description": "The answer has CHAT_RESUME_MAX_FOLLOWERS followers (any instance)", "content": _ERROR},
    503: {"description": "The conversation store failed", "content": _ERROR},
}
_PARAMETERS = {
    "parameters": [
        {"name": "conversation_id", "in": "path", "required": True, "schema": {"type": "string"}},
        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
        {
            "name": "last_event_id",
            "in": "query",
            "description": "The same as the header, for clients that cannot set headers.",
            "schema": {"type": "string"},
        },
    ]
}


def add_resume_route(app: FastAPI, answers: Resumables, caller: Identify) -> None:
    @app.get(
        "/api/conversations/{conversation_id}/stream",
        status_code=200,
        response_model=None,
        response_class=FollowStream,
        responses=_RESPONSES,
        openapi_extra=_PARAMETERS,
    )
    async def resume_answer(request: Request) -> Response:
        """Replay a resumable answer after the client's last event id, then follow it until it ends."""
        target = await owned_conversation(request, caller)
        if isinstance(target, Response):
            return target
        owner, conversation_id = target
        raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
        last = None if not raw else parse_event_id(raw)
        if raw and last is None:
            return error_response(400, BAD_ID)
        try:
            follow = await find(answers, owner, conversation_id, last, time.time())
        except ConversationNotFound:
            return error_response(404, NOT_FOUND)
        except EventIdAhead:
            return error_response(400, BAD_ID)
        except StoreError as error:
            return error_response(503, str(error))
        if follow is None:
            return Response(status_code=204)
        remaining = getattr(request.scope.get("aws.context"), "get_remaining_time_in_millis", None)
        try:
            return await FollowStream.open(
                answers, owner, conversation_id, follow, None if remaining is None else remaining() / 1000
            )
        except StoreError as error:
            return error_response(503, str(error))
        except FollowerLimit:
            limit = answers.settings.resume_max_followers
            return error_response(429, f"This answer already has {limit} followers (CHAT_RESUME_MAX_FOLLOWERS).")
