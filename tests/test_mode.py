"""The stream-or-buffer choice per invocation (lambda-streaming-runtime.md §3), on the events AWS sends."""

from __future__ import annotations

from typing import Any

import pytest

from chat.runtime.mode import should_stream
from chat.runtime.settings import RuntimeSettings
from tests.harness.lambda_events import function_url_event, rest_event

URL_STREAMING = RuntimeSettings(function_url_streaming=True)
REST_STREAMING = RuntimeSettings(rest_streaming_routes=frozenset({"POST /api/chat/stream"}))
EVERYTHING = RuntimeSettings(function_url_streaming=True, rest_streaming_routes=REST_STREAMING.rest_streaming_routes)


def http_api_event() -> dict[str, Any]:
    """An HTTP API (v2) event: the Function URL's shape, but a route key and an execute-api domain. It never streams."""
    event = function_url_event({"message": "hi"})
    event["routeKey"] = "POST /api/chat/stream"
    event["requestContext"]["domainName"] = "abc123.execute-api.eu-west-1.amazonaws.com"
    return event


def rest_healthz_event() -> dict[str, Any]:
    event = rest_event(None)
    event.update(resource="/healthz", path="/healthz", httpMethod="GET")
    event["requestContext"].update(resourcePath="/healthz", httpMethod="GET")
    return event


@pytest.mark.parametrize(
    ("event", "settings", "streams"),
    [
        (function_url_event({"message": "hi"}), URL_STREAMING, True),
        (function_url_event({"message": "hi"}), RuntimeSettings(), False),  # the URL is BUFFERED
        (function_url_event({"message": "hi"}), REST_STREAMING, False),
        (http_api_event(), EVERYTHING, False),
        (rest_event({"message": "hi"}), REST_STREAMING, True),
        (rest_event({"message": "hi"}), URL_STREAMING, False),
        (rest_healthz_event(), EVERYTHING, False),  # only the configured routes
        ({"Records": [{"eventSource": "aws:sqs"}]}, EVERYTHING, False),
        ([], EVERYTHING, False),
        ("not an object", EVERYTHING, False),
    ],
    ids=[
        "url-streaming",
        "url-buffered",
        "url-with-only-rest-configured",
        "http-api",
        "rest-configured-route",
        "rest-no-routes",
        "rest-other-route",
        "sqs",
        "list",
        "string",
    ],
)
def test_the_choice(event: object, settings: RuntimeSettings, streams: bool) -> None:
    assert should_stream(event, settings) is streams


@pytest.mark.parametrize("event", [function_url_event({"message": "hi"}), rest_event({"message": "hi"})])
def test_sam_local_always_buffers(event: dict[str, Any]) -> None:
    """`sam local start-api` cannot take a stream: it would answer 502 (json.loads of the prelude)."""
    local = RuntimeSettings(
        function_url_streaming=True, rest_streaming_routes=REST_STREAMING.rest_streaming_routes, sam_local=True
    )
    assert should_stream(event, local) is False
