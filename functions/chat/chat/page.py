"""The chat page: static HTML, CSS and JavaScript shipped in the package, served by the app itself.

Served from the same origin as the API, so the page works from `make run`, under
`sam local start-api` and on the Function URL with no CORS set-up. The files are a
few KB: each is read once, on first use, and answered from memory with an ETag.
Only the names below are served (no path from the request ever reaches the file
system). The page has its own strict Content-Security-Policy ('self' only, no
inline script or style); the API's responses keep the default one. The page says
whether the service keeps conversations (`<html data-conversations>`), so its first
screen needs no request to find out.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import Response

from .relay import error_response

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page's own policy. `data:` images only for the inline favicon, which spares a request.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ASSET_TYPES = {
    "chat.css": "text/css; charset=utf-8",
    "chat.js": "text/javascript; charset=utf-8",
}
PAGE = "index.html"


@cache
def _load(name: str, conversations: bool = False) -> tuple[bytes, str]:
    """The file's bytes and a strong ETag for them."""
    content = (STATIC_DIR / name).read_bytes()
    if conversations:
        content = content.replace(b'data-conversations="off"', b'data-conversations="on"', 1)
    return content, '"' + hashlib.sha256(content).hexdigest()[:32] + '"'


def _serve(request: Request, name: str, media_type: str, conversations: bool = False) -> Response:
    content, etag = _load(name, conversations)
    headers = {"etag": etag, "cache-control": "no-cache", "content-security-policy": PAGE_CSP}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


def add_page_routes(app: FastAPI, *, conversations: bool) -> None:
    """`GET /` serves the page, `GET /static/<name>` its stylesheet and script.

    `conversations`: the service keeps conversations (a store is configured).

    Plain Starlette routes: a FastAPI path parameter would build a pydantic field at
    import (and import pydantic.v1), tens of milliseconds of every cold start.
    """

    async def page(request: Request) -> Response:
        return _serve(request, PAGE, "text/html; charset=utf-8", conversations)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = ASSET_TYPES.get(name)
        if media_type is None:
            return error_response(404, "Not Found")
        return _serve(request, name, media_type)

    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_route("/static/{name}", asset, methods=["GET"], include_in_schema=False)
