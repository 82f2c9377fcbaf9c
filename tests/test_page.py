"""The chat page over plain HTTP: what the app serves at `/`, its policy, and that the API is unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from chat.headers import SECURITY_HEADERS_TEXT
from chat.page import PAGE_CSP, STATIC_DIR
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.support import AppServer, settings_for

PAGE_FILES = {"/": "index.html", "/static/chat.css": "chat.css", "/static/chat.js": "chat.js"}


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/static/chat.css", "text/css; charset=utf-8"),
        ("/static/chat.js", "text/javascript; charset=utf-8"),
    ],
)
def test_the_page_and_its_assets_are_served_with_the_pages_own_policy(
    server: AppServer, path: str, media_type: str
) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    served = response.content.replace(b'data-conversations="on"', b'data-conversations="off"')
    assert served == (STATIC_DIR / PAGE_FILES[path]).read_bytes()
    assert response.headers.get_list("content-security-policy") == [PAGE_CSP]
    assert "'unsafe-inline'" not in PAGE_CSP
    assert "script-src 'self';" in PAGE_CSP
    assert "frame-ancestors 'none'" in PAGE_CSP
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy", "cross-origin-resource-policy"):
        assert response.headers[name] == SECURITY_HEADERS_TEXT[name]


def test_the_api_keeps_its_own_security_headers(server: AppServer) -> None:
    for response in (httpx.get(server.url + "/healthz"), httpx.post(server.url + "/api/chat/stream", content=b"{")):
        for name, value in SECURITY_HEADERS_TEXT.items():
            assert response.headers.get_list(name) == [value]


def test_an_unchanged_asset_is_answered_304(server: AppServer) -> None:
    first = httpx.get(server.url + "/static/chat.js")
    again = httpx.get(server.url + "/static/chat.js", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""
    assert first.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    "path",
    ["/static/app.py", "/static/..%2Fapp.py", "/static/../app.py", "/static/index.html", "/static/", "/static/chat.JS"],
)
def test_only_the_pages_own_files_are_served(server: AppServer, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "error" in response.json()


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """No CDN, no font service: every URL in the HTML and CSS is relative (or the inline icon)."""
    html = (STATIC_DIR / "index.html").read_text()
    css = (STATIC_DIR / "chat.css").read_text()
    references = re.findall(r'(?:src|href)="([^"]*)"', html) + re.findall(r"url\(([^)]*)\)", css)
    assert references
    assert all(ref.startswith("static/") or ref.startswith("data:image/svg+xml,") for ref in references), references
    assert "@import" not in css
    script = (STATIC_DIR / "chat.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "localStorage" not in script  # the key is kept for the browser session only


def test_the_page_is_not_in_the_api_description(server: AppServer) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


def test_the_page_says_whether_the_service_keeps_conversations(fake: FakeOpenAI, tmp_path: Path) -> None:
    """So the page's first screen needs no request to find out (and no 404 when they are off)."""
    for store_url, expected in [("none", "off"), (f"sqlite:///{tmp_path / 'chat.sqlite3'}", "on")]:
        with AppServer(settings_for(fake, store_url=store_url)) as server:
            response = httpx.get(server.url + "/")
        assert f'<html lang="en" data-conversations="{expected}">' in response.text
        assert response.content.replace(b'"on"', b'"off"') == (STATIC_DIR / "index.html").read_bytes()
