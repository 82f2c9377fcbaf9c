"""The benchmark's "before": the idiomatic relay that the service's optimisations are measured against.

A FastAPI `StreamingResponse` over `AsyncOpenAI(...).chat.completions.create(stream=True)`,
written the way the SDK and FastAPI documentation suggest: a pydantic body, the SDK's
typed chunks, an async generator, everything imported eagerly. Same endpoint and event
framing as the service, so the same harness drives both. Never deployed.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from mangum import Mangum
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam
from pydantic import BaseModel


class ChatBody(BaseModel):
    message: str
    history: list[dict[str, str]] = []


app = FastAPI()
client = AsyncOpenAI()


@app.post("/api/chat/stream")
async def chat_stream(body: ChatBody) -> StreamingResponse:
    messages: list[ChatCompletionMessageParam] = [*body.history, {"role": "user", "content": body.message}]  # type: ignore[list-item]
    stream = await client.chat.completions.create(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o"), messages=messages, stream=True
    )

    async def events() -> AsyncIterator[str]:
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield f"event:message\ndata:{chunk.choices[0].delta.content}\n\n"
        yield "event:message\ndata:[DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


handler = Mangum(app, lifespan="off")
