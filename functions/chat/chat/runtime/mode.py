"""Per invocation: may this answer be streamed? (lambda-streaming-runtime.md §3)

Nothing in `/next` says how the caller invoked us, and a stream sent to a
buffered caller (or the reverse) reaches the user as garbage, so the choice
rests on the event's shape plus what the template told us about invoke modes.
"""

from __future__ import annotations

from typing import Any

from .settings import RuntimeSettings


def is_function_url(event: dict[str, Any]) -> bool:
    domain = event.get("requestContext", {}).get("domainName", "")
    return event.get("version") == "2.0" and isinstance(domain, str) and ".lambda-url." in domain


def rest_route(event: dict[str, Any]) -> str | None:
    """`"METHOD resourcePath"` of a REST API (v1) event; None for any other event."""
    if "version" in event or "resource" not in event:
        return None
    context = event.get("requestContext", {})
    method = context.get("httpMethod") or event.get("httpMethod") or ""
    path = context.get("resourcePath") or event.get("resource") or ""
    return f"{str(method).upper()} {path}"


def should_stream(event: object, settings: RuntimeSettings) -> bool:
    if settings.sam_local or not isinstance(event, dict):
        return False
    if is_function_url(event):
        return settings.function_url_streaming
    route = rest_route(event)
    return route is not None and route in settings.rest_streaming_routes
