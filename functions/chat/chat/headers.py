"""Security headers on every response, added at the ASGI layer so streams are untouched.

A response that sets one of these headers itself keeps its own value: the chat page
sends a Content-Security-Policy that lets it load its own script and stylesheet,
where the API's default policy allows nothing (two policies would both apply).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

SECURITY_HEADERS_TEXT = {name.decode(): value.decode() for name, value in SECURITY_HEADERS}


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                own = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in own]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
