"""The chat page in a real browser: headless Chromium driven by Playwright, against the real app
under uvicorn and the fake model, which paces its tokens. Controls are found by role and
accessible name, as a screen reader finds them: those names are part of the contract.

One browser serves the whole module; every test gets a fresh context (fresh sessionStorage)
whose requests are logged, and none may leave for another origin.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect, sync_playwright

from chat.config import Settings
from tests.harness.browser import HOW_TO_GET, LAUNCH_ARGS, find_chromium
from tests.harness.cutting_proxy import cutting_proxy
from tests.harness.fake_openai import Delta, FakeOpenAI, Reply, Reset, Sleep, deltas, openai_error
from tests.harness.sam_cli import ROOT
from tests.harness.support import AppServer, post_stream, settings_for, unique
from tools import keys as keys_tool

SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
TOKEN = "page-test-token-not-a-secret"
expect.set_options(timeout=10_000)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    path = find_chromium()
    if path is None:
        pytest.fail(HOW_TO_GET)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=LAUNCH_ARGS)
        yield browser
        browser.close()


def _site(fake: FakeOpenAI, store_url: str) -> AppServer:
    """The app with room for paced answers, and heartbeats often enough to cross the page's parser."""
    return AppServer(
        settings_for(fake, idle_timeout=10.0, first_token_timeout=10.0, heartbeat_seconds=0.25, store_url=store_url)
    )


@pytest.fixture(scope="module")
def site(fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The service as `make run` serves it: conversations stored in SQLite."""
    with _site(fake, f"sqlite:///{tmp_path_factory.mktemp('store') / 'chat.sqlite3'}") as server:
        yield server.url


@pytest.fixture(scope="module")
def stateless_site(fake: FakeOpenAI) -> Iterator[str]:
    """Conversations off (`CHAT_STORE_URL=none`): the page keeps the conversation and sends `history`."""
    with _site(fake, "none") as server:
        yield server.url


@dataclass
class Tab:
    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def message(self) -> Any:
        return self.page.get_by_role("textbox", name="Message")

    def button(self, name: str) -> Any:
        return self.page.get_by_role("button", name=name, exact=True)

    @property
    def turns(self) -> Any:
        return self.page.get_by_role("list", name="Conversation").get_by_role("listitem")

    @property
    def stored(self) -> bool:
        return self.page.get_attribute("html", "data-conversations") == "on"

    @property
    def conversations(self) -> Any:
        return self.page.get_by_role("navigation", name="Conversations")

    @property
    def answer(self) -> Any:
        return self.page.locator(".turn.assistant").last

    @property
    def problem(self) -> Any:
        return self.page.get_by_role("alert")

    def send(self, text: str) -> None:
        self.message.fill(text)
        self.button("Send").click()

    def wait_idle(self) -> None:
        expect(self.button("Send")).to_be_visible()

    @property
    def conversation_id(self) -> str:
        return self.page.evaluate("location.hash.slice(1)")  # type: ignore[no-any-return]

    def conversation(self) -> list[dict[str, str]]:
        """The conversation as it is kept: by the service (stored), or in sessionStorage."""
        if self.stored:
            with httpx.Client() as client:
                body = client.get(f"{self.origin}/api/conversations/{self.conversation_id}").json()
            return [{key: m[key] for key in ("role", "content", "status")} for m in body["messages"]]
        saved = self.page.evaluate("sessionStorage.getItem('chat-stream.conversation')")
        messages: list[dict[str, str]] = json.loads(saved)["messages"]
        return messages


@contextlib.contextmanager
def tab(browser: Browser, url: str, fragment: str = "", **options: Any) -> Iterator[Tab]:
    """A fresh browser context on the page; on exit, no request may have gone to another origin."""
    context = browser.new_context(**options)
    page = context.new_page()
    opened = Tab(page, url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            opened.errors.append(message.text)

    def on_request(request: Request) -> None:
        opened.requests.append(request.url)

    page.on("console", on_console)
    page.on("request", on_request)
    try:
        page.goto(url + "/" + fragment)
        yield opened
        foreign = [address for address in opened.requests if not address.startswith(url + "/")]
        assert foreign == [], f"requests left for another origin: {foreign}"
    finally:
        context.close()


@pytest.fixture
def chat(chromium: Browser, site: str) -> Iterator[Tab]:
    """The page on the service that keeps conversations."""
    with tab(chromium, site) as opened:
        expect(opened.conversations).to_be_visible()
        yield opened


@pytest.fixture
def stateless_chat(chromium: Browser, stateless_site: str) -> Iterator[Tab]:
    with tab(chromium, stateless_site) as opened:
        yield opened


@pytest.fixture(params=["stored", "stateless"])
def either_chat(request: pytest.FixtureRequest, chromium: Browser, site: str, stateless_site: str) -> Iterator[Tab]:
    """The page in both modes: conversations kept by the service, or by the tab."""
    with tab(chromium, site if request.param == "stored" else stateless_site) as opened:
        if request.param == "stored":
            expect(opened.conversations).to_be_visible()
        yield opened


def paced(*words: str, pause: float = 0.05, done: bool = True) -> list[Any]:
    """The fake model's steps for an answer written word by word, `pause` seconds apart."""
    steps: list[Any] = []
    for word in words:
        steps += [Delta(word), Sleep(pause)]
    return [*steps, *deltas(done=done)]


# ---------------------------------------------------------------- the first screen


def test_first_screen_is_three_requests_with_named_controls(stateless_chat: Tab, stateless_site: str) -> None:
    chat = stateless_chat
    expect(chat.message).to_be_focused()
    expect(chat.button("Send")).to_be_visible()
    expect(chat.button("New chat")).to_be_visible()
    expect(chat.button("Stop")).to_have_count(0)  # hidden until an answer is being written
    expect(chat.conversations).to_be_hidden()  # conversations are off: nothing to list
    chat.page.wait_for_load_state("networkidle")
    site = stateless_site
    assert chat.requests == [f"{site}/", f"{site}/static/chat.css", f"{site}/static/chat.js"]
    assert chat.errors == []


def test_with_conversations_the_first_screen_is_still_three_requests(chromium: Browser, site: str) -> None:
    """The page carries the caller's list (the page request says who calls): no fourth request for it."""
    earlier = unique("listed-on-arrival")
    assert post_stream(site, {"message": earlier, "store": True}).status == 200
    with tab(chromium, site) as chat:
        expect(chat.conversations.get_by_role("link", name=earlier)).to_be_visible()
        chat.page.wait_for_load_state("networkidle")
        assert chat.requests == [f"{site}/", f"{site}/static/chat.css", f"{site}/static/chat.js"]
        assert chat.errors == []


def test_a_hostile_conversation_title_is_shown_as_text_and_runs_nothing(chromium: Browser, site: str) -> None:
    """The title travels inside the page's JSON data block: it must neither end that element nor run."""
    title = f"</script><img src=x onerror=\"window.__pwned='title'\"> {unique('t')}"
    assert post_stream(site, {"message": title, "store": True}).status == 200
    with tab(chromium, site) as chat:
        expect(chat.conversations.get_by_role("link", name=title)).to_be_visible()
        chat.page.wait_for_load_state("networkidle")
        assert chat.page.evaluate("window.__pwned") is None
        assert chat.page.locator("img").count() == 0
        assert not any(address.endswith("/x") for address in chat.requests)
        assert chat.errors == []


# ---------------------------------------------------------------- streaming


def test_text_appears_while_the_answer_is_still_streaming(chat: Tab, fake: FakeOpenAI) -> None:
    key = fake.script(unique(), [*paced("Early", " words", pause=0.4, done=False), Sleep(1.5), *paced(" LATE-END")])
    chat.send(key)
    expect(chat.answer).to_contain_text("Early words")
    # Visible while the model is still writing: the fake has not finished this request yet.
    assert "LATE-END" not in chat.answer.inner_text()
    assert fake.requests_for(key)[-1].finished is None
    expect(chat.button("Stop")).to_be_visible()
    expect(chat.page.locator("#status")).to_have_text("The assistant is answering.")  # not token by token
    expect(chat.answer).to_contain_text("Early words LATE-END")
    chat.wait_idle()
    expect(chat.page.locator("#status")).to_have_text("Early words LATE-END")
    assert chat.page.locator("#status").get_attribute("aria-live") == "polite"


def test_the_text_arrives_exactly_through_the_pages_parser(chat: Tab, fake: FakeOpenAI) -> None:
    """Leading spaces, blank lines and keep-alive comments (heartbeats every 0.25 s) survive the SSE parser."""
    pieces: list[str | Sleep] = ["Line one", "\n", "  indented start", "\n\n", "para: two", " [DONE] is text"]
    pieces += [Sleep(0.7), "\nend "]
    steps = [piece if isinstance(piece, Sleep) else Delta(piece) for piece in pieces]
    key = fake.script(unique(), [*steps, *deltas()])
    chat.send(key)
    chat.wait_idle()
    expected = "".join(piece for piece in pieces if isinstance(piece, str))
    assert chat.conversation()[-1] == {"role": "assistant", "content": expected, "status": "complete"}
    expect(chat.answer).to_contain_text("para: two [DONE] is text")


PARSER_CASES = [
    # (chunks as they arrive, events the HTML standard's parser dispatches)
    (["data: a\n\n"], [["message", "a"]]),
    (["data:  two spaces\n\n"], [["message", " two spaces"]]),  # exactly one space is dropped
    (["event:message\ndata:x\ndata:\ndata: y\n\n"], [["message", "x\n\ny"]]),
    (
        ["data: cr\r\r", "data: crlf\r", "\n\r\n", "data: lf\n\n"],
        [["message", "cr"], ["message", "crlf"], ["message", "lf"]],
    ),
    ([": keep-alive\n", "\n", "data", ":split\n", "\n"], [["message", "split"]]),
    (["event: error\ndata: The model went silent.\n\n"], [["error", "The model went silent."]]),
    (["id: 7\nretry: 10\nunknown: z\ndata\n\n"], [["message", ""]]),
    (["event: only-a-type\n\ndata: after\n\n"], [["message", "after"]]),  # no data: nothing dispatched
    (["data: unfinished"], []),  # an event the stream did not end is dropped
]


def test_the_pages_sse_parser_follows_the_html_standard(chat: Tab) -> None:
    results = chat.page.evaluate(
        """async cases => {
            const { createSSEParser } = await import('./static/chat.js');
            return cases.map(([chunks]) => {
                const events = [];
                const feed = createSSEParser(event => events.push([event.type, event.data]));
                for (const chunk of chunks) feed(chunk);
                return events;
            });
        }""",
        PARSER_CASES,
    )
    assert results == [expected for _, expected in PARSER_CASES]


def test_markup_in_an_answer_is_shown_and_never_run(chat: Tab, fake: FakeOpenAI, site: str) -> None:
    hostile = [
        "<img src=x onerror=\"window.__pwned='img'\">",
        " and <script>window.__pwned='script'</script>",
        "\n\n```html\n<img src=y onerror=\"window.__pwned='code'\">\n```\n",
        "**<b onmouseover=\"window.__pwned='bold'\">bold</b>**",
    ]
    key = fake.script(unique(), deltas(*hostile))
    chat.send(key)
    chat.wait_idle()
    expect(chat.answer).to_contain_text("<img src=x onerror=\"window.__pwned='img'\">")
    expect(chat.answer).to_contain_text("<script>window.__pwned='script'</script>")
    expect(chat.answer.locator("pre code")).to_have_text("<img src=y onerror=\"window.__pwned='code'\">")
    chat.answer.hover()
    assert chat.page.evaluate("window.__pwned") is None
    assert chat.answer.locator("img, script, b").count() == 0
    assert not any(address.endswith(("/x", "/y")) for address in chat.requests)


# ---------------------------------------------------------------- stop


def test_stop_ends_the_answer_and_closes_the_upstream_request(either_chat: Tab, fake: FakeOpenAI) -> None:
    chat = either_chat
    key = fake.script(unique(), paced("Working", *[" on it"] * 100, pause=0.2))
    chat.send(key)
    expect(chat.answer).to_contain_text("Working on it")
    chat.button("Stop").click()
    expect(chat.answer).to_contain_text("Stopped.")
    record = fake.requests_for(key)[-1]
    assert record.closed_event.wait(5), "the model's request was not closed after Stop"
    chat.wait_idle()
    partial = chat.conversation()[-1]
    assert partial["status"] == "stopped"
    assert partial["content"].startswith("Working on it")
    assert len(partial["content"]) < len("Working" + " on it" * 100)
    if chat.stored:
        # Stopped through the service too, so the answer also stops on Lambda (a closed connection is not seen there).
        assert f"{chat.origin}/api/conversations/{chat.conversation_id}/stop" in chat.requests
        chat.page.reload()
        expect(chat.answer).to_contain_text("Stopped.")


def test_stop_before_a_new_conversations_first_word_stops_it_on_the_service(chat: Tab, fake: FakeOpenAI) -> None:
    """The first turn is resumable but has no id until the model answers: aborting alone left the
    service writing (and paying for) the whole answer unseen."""
    key = fake.script(unique("stop-first"), [Sleep(2), *paced("Working", *[" on it"] * 100, pause=0.2)])
    chat.send(key)
    deadline = time.monotonic() + 10
    while not fake.requests_for(key) and time.monotonic() < deadline:
        chat.page.wait_for_timeout(50)
    chat.button("Stop").click()
    record = fake.requests_for(key)[-1]
    assert record.closed_event.wait(10), "the model's request was not closed after Stop"
    expect(chat.answer).to_contain_text("Stopped.")
    chat.wait_idle()
    assert f"{chat.origin}/api/conversations/{chat.conversation_id}/stop" in chat.requests
    partial = chat.conversation()[-1]
    assert partial["status"] == "stopped"
    assert len(partial["content"]) < len("Working" + " on it" * 100)


# ---------------------------------------------------------------- conversation


def test_the_second_turn_is_answered_with_the_first_as_context(either_chat: Tab, fake: FakeOpenAI) -> None:
    chat = either_chat
    first = fake.script(unique("first"), deltas("Paris is the ", "capital."))
    chat.send(first)
    chat.wait_idle()
    second = unique("second")
    chat.send(second)
    chat.wait_idle()
    expect(chat.turns).to_have_count(4)
    assert fake.requests_for(second)[-1].json["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Paris is the capital."},
        {"role": "user", "content": second},
    ]


def test_a_reload_keeps_the_conversation(either_chat: Tab, fake: FakeOpenAI) -> None:
    chat = either_chat
    first = fake.script(unique("before-reload"), deltas("Remembered ", "answer."))
    chat.send(first)
    chat.wait_idle()
    chat.page.reload()
    expect(chat.turns).to_have_count(2)
    expect(chat.turns.first).to_contain_text(first)
    expect(chat.answer).to_contain_text("Remembered answer.")
    if chat.stored:
        expect(chat.conversations.get_by_role("link", name=first)).to_have_attribute("aria-current", "page")
    after = unique("after-reload")
    chat.send(after)
    chat.wait_idle()
    assert fake.requests_for(after)[-1].json["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Remembered answer."},
        {"role": "user", "content": after},
    ]


def test_new_chat_starts_an_empty_conversation(either_chat: Tab, fake: FakeOpenAI) -> None:
    chat = either_chat
    chat.send(unique("old"))
    chat.wait_idle()
    chat.button("New chat").click()
    expect(chat.turns).to_have_count(0)
    expect(chat.message).to_be_focused()
    fresh = unique("fresh")
    chat.send(fresh)
    chat.wait_idle()
    assert fake.requests_for(fresh)[-1].json["messages"] == [{"role": "user", "content": fresh}]


def test_new_chat_before_the_model_answers_leaves_the_old_conversation_behind(
    chat: Tab, fake: FakeOpenAI, site: str
) -> None:
    """The service names the conversation only when the model answers (or a stop arrives): the old
    request's late headers must not pull the new chat back into the old conversation."""
    first = unique("old-topic")
    chat.send(first)
    chat.wait_idle()
    old = chat.conversation_id
    slow = fake.script(unique("slow-start"), [Sleep(4), *paced("LATE")])
    chat.send(slow)
    deadline = time.monotonic() + 10
    while not fake.requests_for(slow) and time.monotonic() < deadline:
        chat.page.wait_for_timeout(50)
    chat.button("New chat").click()
    expect(chat.turns).to_have_count(0)
    expect(chat.button("Send")).to_be_visible(timeout=1500)  # usable now, not when the old answer ends
    assert fake.requests_for(slow)[-1].closed_event.wait(10), "the old answer was not stopped"
    chat.page.wait_for_timeout(500)  # the old request's response has reached the page
    assert chat.conversation_id == ""
    fresh = unique("fresh-topic")
    chat.send(fresh)
    chat.wait_idle()
    expect(chat.turns).to_have_count(2)
    assert fake.requests_for(fresh)[-1].json["messages"] == [{"role": "user", "content": fresh}]
    assert chat.conversation_id not in ("", old)
    with httpx.Client() as client:
        kept = client.get(f"{site}/api/conversations/{old}").json()["messages"]
    assert [m["content"] for m in kept[:3]] == [first, kept[1]["content"], slow]
    assert kept[3]["status"] == "stopped"


def test_a_malformed_fragment_opens_a_working_new_chat(chromium: Browser, site: str, fake: FakeOpenAI) -> None:
    with tab(chromium, site, fragment="#%E0") as chat:
        expect(chat.conversations).to_be_visible()
        key = fake.script(unique("after-bad-fragment"), deltas("Still ", "working."))
        chat.send(key)
        expect(chat.answer).to_contain_text("Still working.")
        chat.wait_idle()
        assert fake.requests_for(key)[-1].json["messages"] == [{"role": "user", "content": key}]
        assert chat.errors == []


def test_new_chat_during_a_new_conversations_first_wait_stops_that_answer(
    chat: Tab, fake: FakeOpenAI, site: str
) -> None:
    """Left before the service named it, the first answer is still stopped there, and the page stays in the new chat."""
    slow = fake.script(unique("left-early"), [Sleep(2), *paced("Working", *[" on it"] * 100, pause=0.2)])
    chat.send(slow)
    deadline = time.monotonic() + 10
    while not fake.requests_for(slow) and time.monotonic() < deadline:
        chat.page.wait_for_timeout(50)
    chat.button("New chat").click()
    expect(chat.turns).to_have_count(0)
    assert fake.requests_for(slow)[-1].closed_event.wait(10), "the left answer was not stopped"
    chat.page.wait_for_timeout(500)
    assert chat.conversation_id == ""
    expect(chat.turns).to_have_count(0)
    with httpx.Client() as client:
        listed = client.get(f"{site}/api/conversations").json()["conversations"]
        left = next(c for c in listed if c["title"] == slow)
        kept = client.get(f"{site}/api/conversations/{left['id']}").json()["messages"]
    assert kept[-1]["status"] == "stopped"


def test_the_list_opens_a_conversation_with_its_messages(chat: Tab, fake: FakeOpenAI) -> None:
    first = fake.script(unique("topic-a"), deltas("About A."))
    chat.send(first)
    chat.wait_idle()
    chat.button("New chat").click()
    other = unique("topic-b")
    chat.send(other)
    chat.wait_idle()
    chat.conversations.get_by_role("link", name=first).click()
    expect(chat.turns).to_have_count(2)
    expect(chat.turns.first).to_contain_text(first)
    expect(chat.answer).to_have_text("Assistant: About A.")
    follow_up = unique("follow-up")
    chat.send(follow_up)
    chat.wait_idle()
    assert [m["content"] for m in fake.requests_for(follow_up)[-1].json["messages"]] == [  # type: ignore[attr-defined]
        first,
        "About A.",
        follow_up,
    ]
    chat.page.go_back()  # the fragment holds the conversation: back returns to the other one
    expect(chat.turns.first).to_contain_text(other)


def test_on_a_phone_the_list_opens_from_its_button(chromium: Browser, site: str, fake: FakeOpenAI) -> None:
    with tab(chromium, site, viewport={"width": 390, "height": 760}, has_touch=True) as chat:
        first = unique("on-the-phone")
        chat.send(first)
        chat.wait_idle()
        chat.button("New chat").click()
        expect(chat.conversations).to_be_hidden()
        toggle = chat.button("Conversations")
        toggle.click()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        chat.conversations.get_by_role("link", name=first).click()
        expect(chat.turns.first).to_contain_text(first)
        expect(chat.conversations).to_be_hidden()  # the list closes on opening a conversation
        expect(toggle).to_have_attribute("aria-expanded", "false")


def test_delete_removes_a_conversation_after_a_second_click(chat: Tab, fake: FakeOpenAI, site: str) -> None:
    doomed = unique("doomed")
    chat.send(doomed)
    chat.wait_idle()
    conversation_id = chat.conversation_id
    chat.conversations.get_by_role("button", name=f"Delete {doomed}").click()
    expect(chat.conversations.get_by_role("link", name=doomed)).to_be_visible()  # one click deletes nothing
    chat.conversations.get_by_role("button", name=f"Confirm: delete {doomed}").click()
    expect(chat.conversations.get_by_role("link", name=doomed)).to_have_count(0)
    expect(chat.turns).to_have_count(0)
    assert httpx.get(f"{site}/api/conversations/{conversation_id}").status_code == 404
    chat.page.reload()
    expect(chat.conversations.get_by_role("link", name=doomed)).to_have_count(0)


# ---------------------------------------------------------------- errors


def _json_error(site: str, body: dict[str, Any]) -> tuple[int, str]:
    """What the service answers this body, asked directly: the page must show that message."""
    result = post_stream(site, body)
    return result.status, json.loads(result.raw)["error"]


def _refused(chat: Tab, typed: str, status: int, said: str, *extra: str) -> None:
    expect(chat.problem).to_contain_text(said)
    for text in extra:
        expect(chat.problem).to_contain_text(text)
    expect(chat.problem.get_by_role("button", name="Retry")).to_be_visible()
    assert chat.message.input_value() == typed, f"the typed text was lost on a {status}"
    if chat.stored and chat.conversation_id:
        # The service kept the user's turn before the model refused: the page shows what is stored.
        expect(chat.turns).to_have_count(len(chat.conversation()))
        expect(chat.turns.first).to_contain_text(typed[:100])
    else:
        expect(chat.turns).to_have_count(0)


def test_400_shows_the_services_reason_and_keeps_the_text(stateless_chat: Tab, stateless_site: str) -> None:
    chat, site = stateless_chat, stateless_site
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(51)]
    chat.page.evaluate(
        "turns => sessionStorage.setItem('chat-stream.conversation', JSON.stringify({messages: turns}))", turns
    )
    chat.page.reload()
    typed = "one more question"
    status, said = _json_error(site, {"message": typed, "history": turns})
    assert status == 400
    chat.send(typed)
    expect(chat.problem).to_contain_text(said)
    assert chat.message.input_value() == typed
    expect(chat.turns).to_have_count(51)


def test_413_shows_the_limit_and_keeps_the_text(chat: Tab, site: str) -> None:
    typed = "x" * 70_000
    status, said = _json_error(site, {"message": typed})
    assert status == 413
    chat.send(typed)
    _refused(chat, typed, status, said, "too long")


def test_429_shows_the_wait_and_keeps_the_text(chat: Tab, fake: FakeOpenAI, site: str) -> None:
    limited = openai_error(429, "Rate limit reached", "rate_limit_exceeded")
    typed = fake.script(unique("busy"), [Reply(429, limited.body, headers=(("retry-after", "7"),))])
    status, said = _json_error(site, {"message": typed})
    assert status == 429
    chat.send(typed)
    _refused(chat, typed, status, said, "try again in 7 s")
    assert chat.conversation_id, "the service kept the turn of a refused stored request: the page should show it"


def test_a_429_for_a_request_bigger_than_the_budget_shows_why_and_no_wait(
    chromium: Browser, fake: FakeOpenAI, tmp_path: Any
) -> None:
    """A daily budget of 2000 cannot hold a request that reserves 4096 for its answer: there is no Retry-After,
    and the page must not say "try again in a moment"."""
    settings = settings_for(fake, store_url=f"sqlite:///{tmp_path / 'chat.sqlite3'}", budget_tokens_per_day=2000)
    with AppServer(settings) as server, tab(chromium, server.url) as chat:
        expect(chat.conversations).to_be_visible()
        typed = unique("too-big")
        status, said = _json_error(server.url, {"message": typed})
        assert status == 429
        chat.send(typed)
        _refused(chat, typed, status, said, "more than your daily budget")
        expect(chat.problem).not_to_contain_text("try again in")


def test_5xx_shows_the_failure_and_keeps_the_text(chat: Tab, fake: FakeOpenAI, site: str) -> None:
    typed = fake.script(unique("down"), [openai_error(500, "The server had an error", "server_error")])
    status, said = _json_error(site, {"message": typed})
    assert status >= 500
    chat.send(typed)
    _refused(chat, typed, status, said, f"HTTP {status}")


def test_409_while_another_tab_is_answering_keeps_the_text(
    chat: Tab, chromium: Browser, fake: FakeOpenAI, site: str
) -> None:
    chat.send(fake.script(unique("long"), paced("Still", *[" writing"] * 60, pause=0.1)))
    expect(chat.answer).to_contain_text("Still writing")
    with tab(chromium, site, fragment=f"#{chat.conversation_id}") as other:
        expect(other.turns).to_have_count(1)  # the user's turn: the answer is stored when it ends
        typed = "meanwhile, in another tab"
        status, said = _json_error(site, {"message": typed, "conversation_id": chat.conversation_id})
        assert status == 409
        other.send(typed)
        expect(other.problem).to_contain_text(said)
        expect(other.problem).to_contain_text("already being written")
        assert other.message.input_value() == typed
    chat.button("Stop").click()
    chat.wait_idle()


def test_403_from_an_iam_function_url_explains_that_browsers_cannot_sign(chat: Tab, site: str) -> None:
    """AWS itself is mocked here: a Function URL with AuthType AWS_IAM refuses unsigned requests with 403."""

    def aws_refusal(route: Route) -> None:
        route.fulfill(status=403, content_type="application/json", body='{"Message":"Forbidden"}')

    chat.page.route(f"{site}/api/chat/stream", aws_refusal)
    typed = "hello from a browser"
    chat.send(typed)
    _refused(chat, typed, 403, "AuthMode=AWS_IAM", "cannot sign requests", "AuthMode=TOKEN")


def test_an_error_event_mid_answer_keeps_the_partial_text_and_retries(either_chat: Tab, fake: FakeOpenAI) -> None:
    chat = either_chat
    typed = fake.script(unique("flaky"), [Delta("Partial answer"), Sleep(0.2), Reset()])
    chat.send(typed)
    expect(chat.problem).to_contain_text("The answer ended early: The connection to the model was lost.")
    expect(chat.answer).to_contain_text("Partial answer")
    fake.script(typed, deltas("Whole answer."))
    chat.problem.get_by_role("button", name="Retry").click()
    chat.wait_idle()
    # The tab drops the failed turn; the service keeps it (with its status) and adds the new one.
    expect(chat.turns).to_have_count(4 if chat.stored else 2)
    expect(chat.answer).to_have_text("Assistant: Whole answer.")
    expect(chat.problem).to_have_count(0)
    if chat.stored:
        assert [m["status"] for m in chat.conversation()] == ["complete", "error", "complete", "complete"]


def test_a_lost_network_is_reported_as_such_and_keeps_the_text(chat: Tab) -> None:
    chat.page.context.set_offline(True)
    typed = "sent while offline"
    chat.send(typed)
    expect(chat.problem).to_contain_text("The connection to the service was lost")
    assert chat.message.input_value() == typed
    chat.page.context.set_offline(False)
    chat.problem.get_by_role("button", name="Retry").click()
    chat.wait_idle()
    expect(chat.turns).to_have_count(2)
    assert chat.message.input_value() == ""


def test_a_dropped_connection_mid_answer_reconnects_and_misses_nothing(
    chromium: Browser, site: str, fake: FakeOpenAI
) -> None:
    words = ["Resumed", *[f" word{index}" for index in range(30)], "."]
    typed = fake.script(unique("drop"), paced(*words, pause=0.05))
    with cutting_proxy(int(site.rsplit(":", 1)[1])) as proxy, tab(chromium, proxy.url) as chat:
        expect(chat.conversations).to_be_visible()
        proxy.arm(b"word3\n")  # the network fails under the answer's stream, after " word3"
        chat.send(typed)
        chat.wait_idle()
        assert proxy.cuts == 1
        expect(chat.answer).to_have_text("Assistant: " + "".join(words))
        expect(chat.problem).to_have_count(0)
        assert chat.conversation()[-1] == {"role": "assistant", "content": "".join(words), "status": "complete"}


# ---------------------------------------------------------------- auth


def keyed(fake: FakeOpenAI, store_url: str, name: str) -> tuple[Settings, str]:
    """Settings with CHAT_AUTH=keys (what AuthMode=TOKEN deploys) and a key made with `tools.keys`."""
    settings = settings_for(fake, store_url=store_url, auth="keys")
    status, lines = keys_tool.run(["create", name], settings)
    assert status == 0, lines
    return settings, lines[-1]


@pytest.fixture(params=["named-key", "token-secret", "token-secret-stateless"])
def token_site(
    request: pytest.FixtureRequest, aws: Any, fake: FakeOpenAI, tmp_path: Any
) -> Iterator[tuple[str, bool, str]]:
    """A service whose callers need a bearer key: a named key made with `tools.keys` (CHAT_AUTH=keys, what
    AuthMode=TOKEN deploys), or the one token in Secrets Manager (moto: AWS itself mocked)."""
    stored = request.param != "token-secret-stateless"
    store_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}" if stored else "none"
    if request.param == "named-key":
        settings, key = keyed(fake, store_url, "page-user")
    else:
        arn = aws.create_secret(Name="chat/page-token", SecretString=TOKEN)["ARN"]
        settings, key = settings_for(fake, auth_token_secret_id=arn, store_url=store_url), TOKEN
    with AppServer(settings) as server:
        yield server.url, stored, key


def test_with_a_token_the_page_asks_for_a_key_once_and_keeps_it_for_the_tab(
    chromium: Browser, token_site: tuple[str, bool, str], fake: FakeOpenAI
) -> None:
    url, stored, key = token_site
    with tab(chromium, url) as chat:
        dialog = chat.page.get_by_role("dialog", name="API key")
        typed = unique("authorised")
        if not stored:
            chat.send(typed)  # the first 401 comes with the first message; the text stays in the box
            expect(dialog).to_be_visible()
            assert chat.message.input_value() == typed
        # With conversations, listing them on load is the first 401.
        expect(dialog).to_be_visible()
        dialog.get_by_role("textbox", name="API key").fill("wrong-key")
        dialog.get_by_role("button", name="Use key").click()
        expect(dialog).to_contain_text("That key was not accepted")
        dialog.get_by_role("textbox", name="API key").fill(key)
        dialog.get_by_role("button", name="Use key").click()
        expect(dialog).to_be_hidden()
        if stored:
            expect(chat.conversations).to_be_visible()
            chat.send(typed)
        chat.wait_idle()
        expect(chat.answer).to_contain_text("offline demo model")
        assert fake.requests_for(typed), "the message was not sent after the key was given"
        second = unique("no-second-prompt")
        chat.send(second)
        chat.wait_idle()
        expect(dialog).to_be_hidden()
        stored_keys = chat.page.evaluate("[sessionStorage.getItem('chat-stream.key'), JSON.stringify(localStorage)]")
        assert stored_keys == [key, "{}"]
        assert all(key not in address for address in chat.requests)
        assert key not in chat.page.url


def test_a_key_with_an_invisible_character_is_refused_in_the_dialog(
    chromium: Browser, fake: FakeOpenAI, tmp_path: Any
) -> None:
    """A pasted zero-width space cannot go in a header: stored, it failed every request as a lost connection."""
    settings, key = keyed(fake, f"sqlite:///{tmp_path / 'chat.sqlite3'}", "paste-user")
    with AppServer(settings) as server, tab(chromium, server.url) as chat:
        dialog = chat.page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        dialog.get_by_role("textbox", name="API key").fill(key + "\u200b")
        dialog.get_by_role("button", name="Use key").click()
        expect(dialog).to_contain_text("That is not an API key")
        assert chat.page.evaluate("sessionStorage.getItem('chat-stream.key')") is None
        dialog.get_by_role("textbox", name="API key").fill(key)
        dialog.get_by_role("button", name="Use key").click()
        expect(dialog).to_be_hidden()
        expect(chat.conversations).to_be_visible()
        chat.send(unique("pasted"))
        chat.wait_idle()
        expect(chat.answer).to_contain_text("offline demo model")
        expect(chat.problem).to_have_count(0)


def test_a_cancelled_key_dialog_still_keeps_the_conversation(
    chromium: Browser, fake: FakeOpenAI, tmp_path: Any
) -> None:
    """Cancel, then write: the key asked for then must also load the conversations, or the chat goes out unsaved."""
    settings, key = keyed(fake, f"sqlite:///{tmp_path / 'chat.sqlite3'}", "cancel-user")
    with AppServer(settings) as server, tab(chromium, server.url) as chat:
        dialog = chat.page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        dialog.get_by_role("button", name="Cancel").click()
        expect(dialog).to_be_hidden()
        typed = unique("after-cancel")
        chat.send(typed)
        expect(dialog).to_be_visible()
        dialog.get_by_role("textbox", name="API key").fill(key)
        dialog.get_by_role("button", name="Use key").click()
        expect(chat.answer).to_contain_text("offline demo model")
        chat.wait_idle()
        expect(chat.conversations).to_be_visible()
        expect(chat.conversations.get_by_role("link", name=typed)).to_be_visible()
        with httpx.Client() as client:
            listed = client.get(f"{server.url}/api/conversations", headers={"authorization": f"Bearer {key}"}).json()
        assert [c["title"] for c in listed["conversations"]] == [typed]
        assert chat.conversation_id == listed["conversations"][0]["id"]


# ---------------------------------------------------------------- keyboard, CSP, layout


def test_keyboard_alone_writes_two_lines_and_sends(chat: Tab, fake: FakeOpenAI) -> None:
    keyboard = chat.page.keyboard
    expect(chat.message).to_be_focused()
    first = unique("line-one")
    keyboard.type(first)
    keyboard.press("Shift+Enter")
    keyboard.type("line two")
    keyboard.press("Enter")
    chat.wait_idle()
    sent = f"{first}\nline two"
    assert fake.requests_for(sent), "Enter did not send, or Shift+Enter did not make a new line"
    expect(chat.turns.first).to_contain_text("line two")
    # Tab reaches every control; Enter on the focused New chat button empties the conversation.
    for _ in range(3):
        keyboard.press("Shift+Tab")
        if chat.page.evaluate("document.activeElement.textContent") == "New chat":
            break
    expect(chat.button("New chat")).to_be_focused()
    keyboard.press("Enter")
    expect(chat.turns).to_have_count(0)


def test_the_pages_csp_blocks_an_inline_script(chat: Tab) -> None:
    chat.page.evaluate(
        """() => {
            const script = document.createElement('script');
            script.textContent = 'window.__inline = true';
            document.body.append(script);
            const styled = document.createElement('style');
            styled.textContent = 'body { display: none }';
            document.head.append(styled);
        }"""
    )
    expect(chat.button("Send")).to_be_visible()  # the inline style did not apply either
    assert chat.page.evaluate("window.__inline") is None
    deadline = time.monotonic() + 5
    while not any("Content Security Policy" in error for error in chat.errors) and time.monotonic() < deadline:
        chat.page.wait_for_timeout(50)
    assert any("inline script" in error and "Content Security Policy" in error for error in chat.errors), chat.errors


def test_screenshots_at_desktop_and_phone_widths_in_light_and_dark(
    chromium: Browser, fake: FakeOpenAI, tmp_path: Any
) -> None:
    """A fresh store per view, so each list shows the same conversations; screenshots in .artifacts/screenshots/."""
    answer = [
        "Here is a function that streams a file in chunks:",
        "\n\n```python\ndef chunks(path, size=4096):\n    with open(path, 'rb') as f:\n",
        "        while block := f.read(size):\n            yield block\n```\n\n",
        "It keeps memory flat:\n\n- reads `size` bytes at a time\n- works for **any** file size\n",
    ]
    question = fake.script("How do I read a big file in chunks in Python?", paced(*answer))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390, 360):
        for scheme in ("light", "dark"):
            with _site(fake, f"sqlite:///{tmp_path / f'{width}-{scheme}.sqlite3'}") as server:
                for earlier in ("Plan three days in Lisbon", "What is Server-Sent Events?"):
                    assert post_stream(server.url, {"message": earlier, "store": True}).status == 200
                options: dict[str, Any] = {"viewport": {"width": width, "height": 760}, "color_scheme": scheme}
                with tab(chromium, server.url, **options) as chat:
                    expect(chat.page.locator("#conversation-list a", has_text="Lisbon")).to_have_count(1)
                    chat.send(question)
                    chat.wait_idle()
                    expect(chat.answer.locator("pre code")).to_contain_text("yield block")
                    overflow = chat.page.evaluate("document.documentElement.scrollWidth - innerWidth")
                    assert overflow <= 0, f"{width} px wide: the page scrolls sideways by {overflow} px"
                    if width != 360:
                        chat.page.screenshot(path=SCREENSHOTS / f"chat-{width}-{scheme}.png")
                    assert chat.errors == []


def test_the_whole_page_is_under_40_kb(chat: Tab, site: str) -> None:
    sizes = chat.page.evaluate(
        """async urls => Promise.all(urls.map(async url => (await (await fetch(url)).arrayBuffer()).byteLength))""",
        [f"{site}/", f"{site}/static/chat.css", f"{site}/static/chat.js"],
    )
    assert sum(sizes) < 40 * 1024, sizes
