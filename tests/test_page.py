"""The chat page over plain HTTP: what the app serves at `/`, its policy, and that the API is unchanged."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.headers import SECURITY_HEADERS_TEXT
from chat.page import PAGE_CSP, STATIC_DIR, data_block
from tests.harness.fake_openai import FakeOpenAI
from tests.harness.support import AppServer, post_stream, settings_for

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


LIST_BLOCK = re.compile(rb'<script type="application/json" id="conversations">(.*?)</script>\n')


def _listed(page: httpx.Response) -> Any:
    """The conversations the page carries, or None."""
    found = LIST_BLOCK.search(page.content)
    return None if found is None else json.loads(found[1])


def test_the_page_says_whether_the_service_keeps_conversations(fake: FakeOpenAI, tmp_path: Path) -> None:
    """So the page's first screen needs no request to find out (and no 404 when they are off)."""
    for store_url, expected in [("none", "off"), (f"sqlite:///{tmp_path / 'chat.sqlite3'}", "on")]:
        with AppServer(settings_for(fake, store_url=store_url)) as server:
            response = httpx.get(server.url + "/")
        assert f'<html lang="en" data-conversations="{expected}">' in response.text
        shipped = LIST_BLOCK.sub(b"", response.content).replace(b'"on"', b'"off"')
        assert shipped == (STATIC_DIR / "index.html").read_bytes()


def test_the_page_carries_the_callers_first_conversations(fake: FakeOpenAI, tmp_path: Path) -> None:
    """The list is in the page (no fourth request), exactly as the API lists it, and cannot end its element."""
    hostile = "</script><!-- <img src=x onerror=alert(1)> & more"
    with AppServer(settings_for(fake, store_url=f"sqlite:///{tmp_path / 'chat.sqlite3'}")) as server:
        assert _listed(httpx.get(server.url + "/")) == {"conversations": [], "next_cursor": None}
        for message in ("A quiet question", hostile):
            assert post_stream(server.url, {"message": message, "store": True}).status == 200
        page = httpx.get(server.url + "/")
        listed = httpx.get(server.url + "/api/conversations?limit=30").json()
    assert page.status_code == 200
    assert _listed(page) == listed
    assert [c["title"] for c in listed["conversations"]] == [hostile, "A quiet question"]
    block = LIST_BLOCK.search(page.content)
    assert block is not None
    assert not re.search(rb"[<>&]", block[1])
    assert page.content.count(b"</script>") == 2  # the script's own element and the data block's
    assert page.headers["cache-control"] == "no-store"  # it is this caller's
    assert "etag" not in page.headers
    assert page.headers.get_list("content-security-policy") == [PAGE_CSP]


def test_a_data_block_escapes_what_could_end_or_bend_it() -> None:
    payload = {"title": "</script><!--\u2028\u2029&<>", "plain": "été"}
    block = data_block("x", payload)
    inner = block.removeprefix(b'<script type="application/json" id="x">').removesuffix(b"</script>\n")
    assert json.loads(inner) == payload
    for raw in (b"<", b">", b"&", "\u2028".encode(), "\u2029".encode()):
        assert raw not in inner


def test_a_caller_known_only_from_a_key_gets_the_page_without_the_list(
    aws: Any, fake: FakeOpenAI, tmp_path: Path
) -> None:
    """A browser's navigation carries no Authorization: the page is the shared one and the script fetches the list
    once the key is entered. A request that does carry the key gets its list (Secrets Manager mocked: moto)."""
    token = "page-list-token-not-a-secret"
    arn = aws.create_secret(Name="chat/page-list", SecretString=token)["ARN"]
    settings = settings_for(fake, store_url=f"sqlite:///{tmp_path / 'chat.sqlite3'}", auth_token_secret_id=arn)
    with AppServer(settings) as server:
        anonymous = httpx.get(server.url + "/")
        keyed = httpx.get(server.url + "/", headers={"authorization": f"Bearer {token}"})
    assert anonymous.status_code == 200
    assert _listed(anonymous) is None
    assert 'data-conversations="on"' in anonymous.text
    assert anonymous.headers["cache-control"] == "no-cache"
    assert "etag" in anonymous.headers
    assert _listed(keyed) == {"conversations": [], "next_cursor": None}


def test_a_failing_store_serves_the_page_without_the_list(fake: FakeOpenAI, tmp_path: Path) -> None:
    """Never a 500 because of the store: the script fetches the list itself (and shows the store's 503)."""
    (tmp_path / "file").write_text("not a directory")
    with AppServer(settings_for(fake, store_url=f"sqlite:///{tmp_path / 'file' / 'chat.sqlite3'}")) as server:
        page = httpx.get(server.url + "/")
        listing = httpx.get(server.url + "/api/conversations")
    assert listing.status_code == 503  # the store really is failing
    assert page.status_code == 200
    assert 'data-conversations="on"' in page.text
    assert _listed(page) is None
