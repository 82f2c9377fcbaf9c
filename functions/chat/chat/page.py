"""The chat page: static HTML, CSS and JavaScript shipped in the package, served by the app itself.

Served from the same origin as the API, so the page works from `make run`, under
`sam local start-api` and on the Function URL with no CORS set-up. The files are a
few KB: each is read once, on first use, and answered from memory with an ETag.
Only the names below are served (no path from the request ever reaches the file
system). The page has its own strict Content-Security-Policy ('self' only, no
inline script or style); the API's responses keep the default one. The page says
whether the service keeps conversations (`<html data-conversations>`), and when the
page request itself identifies the caller (`CHAT_AUTH=none`, a verified IAM principal)
it carries their first page of conversations as a JSON data block, so the first screen
is three requests (HTML, CSS, JS). That page is per caller, so it is never cached; when
the caller is not known yet (a bearer key is entered later) or the store fails, the
page is served without the list and the script fetches it.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.responses import Response

from .conversation_api import Identify, list_page
from .observability import logger
from .relay import error_response
from .store.base import Store, StoreError

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
LIST_LIMIT = 30  # conversations in the embedded list: as many as chat.js asks for
# A data block's JSON must not end the <script> element (`</script>`) nor open a comment (`<!--`):
# `<`, `>` and `&` become JSON escapes, as do the line separators some parsers treat as newlines.
_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026", 0x2028: "\\u2028", 0x2029: "\\u2029"}


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


def data_block(element_id: str, payload: object) -> bytes:
    """`payload` as a `<script type="application/json">`: never run (so the CSP allows it), safe to embed."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).translate(_JSON_ESCAPES)
    return f'<script type="application/json" id="{element_id}">{text}</script>\n'.encode()


async def _first_list(request: Request, store: Store, caller: Identify) -> dict[str, object] | None:
    """The caller's first page of conversations; None when this request does not say who calls, or the store fails."""
    owner = await caller(request)
    if isinstance(owner, Response):
        return None
    try:
        return await list_page(store, owner, LIST_LIMIT, None)
    except StoreError as error:
        logger.warning("page served without its conversation list", reason=str(error))
        return None


def add_page_routes(app: FastAPI, *, store: Store | None, caller: Identify) -> None:
    """`GET /` serves the page, `GET /static/<name>` its stylesheet and script.

    `store`: where conversations are kept (None: they are off); `caller` identifies the
    page request's caller exactly as the conversation routes do.

    Plain Starlette routes: a FastAPI path parameter would build a pydantic field at
    import (and import pydantic.v1), tens of milliseconds of every cold start.
    """

    async def page(request: Request) -> Response:
        listed = await _first_list(request, store, caller) if store is not None else None
        if listed is None:
            return _serve(request, PAGE, "text/html; charset=utf-8", store is not None)
        content = _load(PAGE, True)[0].replace(b"</head>", data_block("conversations", listed) + b"</head>", 1)
        headers = {"cache-control": "no-store", "content-security-policy": PAGE_CSP}
        return Response(content, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        media_type = ASSET_TYPES.get(name)
        if media_type is None:
            return error_response(404, "Not Found")
        return _serve(request, name, media_type)

    app.add_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_route("/static/{name}", asset, methods=["GET"], include_in_schema=False)
