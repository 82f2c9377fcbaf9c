"""What the runtime loop is told about invoke modes, from the variables the template sets next to them.

No Runtime API header says whether the caller can take a stream
(lambda-streaming-runtime.md §3), so the loop is told: the Function URL's
InvokeMode, and which REST routes are deployed with response streaming. The
app's own settings are `chat.config`'s; the runtime reads none of them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() == "true"


def _routes(env: Mapping[str, str], name: str) -> frozenset[str]:
    """`"POST /api/chat/stream, GET /x"` -> {"POST /api/chat/stream", "GET /x"} (method upper-cased)."""
    routes = set()
    for item in env.get(name, "").split(","):
        method, _, path = item.strip().partition(" ")
        if method and path.strip():
            routes.add(f"{method.upper()} {path.strip()}")
    return frozenset(routes)


@dataclass(frozen=True)
class RuntimeSettings:
    function_url_streaming: bool = False
    rest_streaming_routes: frozenset[str] = frozenset()
    sam_local: bool = False  # set by `sam local`, whose API Gateway cannot take a stream

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RuntimeSettings:
        env = os.environ if env is None else env
        return cls(
            function_url_streaming=_flag(env, "CHAT_FUNCTION_URL_STREAMING"),
            rest_streaming_routes=_routes(env, "CHAT_REST_STREAMING_ROUTES"),
            sam_local=_flag(env, "AWS_SAM_LOCAL"),
        )
