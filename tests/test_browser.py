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

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, Route, expect, sync_playwright

from tests.harness.browser import HOW_TO_GET, LAUNCH_ARGS, find_chromium
from tests.harness.fake_openai import Delta, FakeOpenAI, Reply, Reset, Sleep, deltas, openai_error
from tests.harness.sam_cli import ROOT
from tests.harness.support import AppServer, post_stream, settings_for, unique

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


@pytest.fixture(scope="module")
def site(fake: FakeOpenAI) -> Iterator[str]:
    """The app with room for paced answers, and heartbeats often enough to cross the page's parser."""
    settings = settings_for(fake, idle_timeout=10.0, first_token_timeout=10.0, heartbeat_seconds=0.25)
    with AppServer(settings) as server:
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

    def conversation(self) -> list[dict[str, str]]:
        saved = self.page.evaluate("sessionStorage.getItem('chat-stream.conversation')")
        messages: list[dict[str, str]] = json.loads(saved)["messages"]
        return messages


@contextlib.contextmanager
def tab(browser: Browser, url: str, **options: Any) -> Iterator[Tab]:
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
        page.goto(url + "/")
        yield opened
        foreign = [address for address in opened.requests if not address.startswith(url + "/")]
        assert foreign == [], f"requests left for another origin: {foreign}"
    finally:
        context.close()


@pytest.fixture
def chat(chromium: Browser, site: str) -> Iterator[Tab]:
    with tab(chromium, site) as opened:
        yield opened


def paced(*words: str, pause: float = 0.05, done: bool = True) -> list[Any]:
    """The fake model's steps for an answer written word by word, `pause` seconds apart."""
    steps: list[Any] = []
    for word in words:
        steps += [Delta(word), Sleep(pause)]
    return [*steps, *deltas(done=done)]


# ---------------------------------------------------------------- the first screen


def test_first_screen_is_three_requests_with_named_controls(chat: Tab, site: str) -> None:
    expect(chat.message).to_be_focused()
    expect(chat.button("Send")).to_be_visible()
    expect(chat.button("New chat")).to_be_visible()
    expect(chat.button("Stop")).to_have_count(0)  # hidden until an answer is being written
    chat.page.wait_for_load_state("networkidle")
    assert chat.requests == [f"{site}/", f"{site}/static/chat.css", f"{site}/static/chat.js"]
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


def test_stop_ends_the_answer_and_closes_the_upstream_request(chat: Tab, fake: FakeOpenAI) -> None:
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


# ---------------------------------------------------------------- conversation


def test_the_second_turn_is_answered_with_the_first_as_context(chat: Tab, fake: FakeOpenAI) -> None:
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


def test_a_reload_keeps_the_conversation(chat: Tab, fake: FakeOpenAI) -> None:
    first = fake.script(unique("before-reload"), deltas("Remembered ", "answer."))
    chat.send(first)
    chat.wait_idle()
    chat.page.reload()
    expect(chat.turns).to_have_count(2)
    expect(chat.turns.first).to_contain_text(first)
    expect(chat.answer).to_contain_text("Remembered answer.")
    after = unique("after-reload")
    chat.send(after)
    chat.wait_idle()
    assert fake.requests_for(after)[-1].json["messages"] == [
        {"role": "user", "content": first},
        {"role": "assistant", "content": "Remembered answer."},
        {"role": "user", "content": after},
    ]


def test_new_chat_starts_an_empty_conversation(chat: Tab, fake: FakeOpenAI) -> None:
    chat.send(unique("old"))
    chat.wait_idle()
    chat.button("New chat").click()
    expect(chat.turns).to_have_count(0)
    expect(chat.message).to_be_focused()
    fresh = unique("fresh")
    chat.send(fresh)
    chat.wait_idle()
    assert fake.requests_for(fresh)[-1].json["messages"] == [{"role": "user", "content": fresh}]


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
    expect(chat.turns).to_have_count(0)


def test_400_shows_the_services_reason_and_keeps_the_text(chat: Tab, site: str) -> None:
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


def test_5xx_shows_the_failure_and_keeps_the_text(chat: Tab, fake: FakeOpenAI, site: str) -> None:
    typed = fake.script(unique("down"), [openai_error(500, "The server had an error", "server_error")])
    status, said = _json_error(site, {"message": typed})
    assert status >= 500
    chat.send(typed)
    _refused(chat, typed, status, said, f"HTTP {status}")


def test_403_from_an_iam_function_url_explains_that_browsers_cannot_sign(chat: Tab, site: str) -> None:
    """AWS itself is mocked here: a Function URL with AuthType AWS_IAM refuses unsigned requests with 403."""

    def aws_refusal(route: Route) -> None:
        route.fulfill(status=403, content_type="application/json", body='{"Message":"Forbidden"}')

    chat.page.route(f"{site}/api/chat/stream", aws_refusal)
    typed = "hello from a browser"
    chat.send(typed)
    _refused(chat, typed, 403, "AuthMode=AWS_IAM", "cannot sign requests", "AuthMode=TOKEN")


def test_an_error_event_mid_answer_keeps_the_partial_text_and_retries(chat: Tab, fake: FakeOpenAI) -> None:
    typed = fake.script(unique("flaky"), [Delta("Partial answer"), Sleep(0.2), Reset()])
    chat.send(typed)
    expect(chat.problem).to_contain_text("The answer ended early: The connection to the model was lost.")
    expect(chat.answer).to_contain_text("Partial answer")
    fake.script(typed, deltas("Whole answer."))
    chat.problem.get_by_role("button", name="Retry").click()
    chat.wait_idle()
    expect(chat.turns).to_have_count(2)
    expect(chat.answer).to_have_text("Assistant: Whole answer.")
    expect(chat.problem).to_have_count(0)


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


# ---------------------------------------------------------------- auth


@pytest.fixture
def token_site(aws: Any, fake: FakeOpenAI) -> Iterator[str]:
    """A service whose callers need a bearer token (the token in Secrets Manager: moto, AWS itself mocked)."""
    arn = aws.create_secret(Name="chat/page-token", SecretString=TOKEN)["ARN"]
    with AppServer(settings_for(fake, auth_token_secret_id=arn)) as server:
        yield server.url


def test_with_a_token_the_page_asks_for_a_key_once_and_keeps_it_for_the_tab(
    chromium: Browser, token_site: str, fake: FakeOpenAI
) -> None:
    with tab(chromium, token_site) as chat:
        typed = unique("authorised")
        chat.send(typed)
        dialog = chat.page.get_by_role("dialog", name="API key")
        expect(dialog).to_be_visible()
        assert chat.message.input_value() == typed
        dialog.get_by_role("textbox", name="API key").fill("wrong-key")
        dialog.get_by_role("button", name="Use key").click()
        expect(dialog).to_contain_text("That key was not accepted")
        dialog.get_by_role("textbox", name="API key").fill(TOKEN)
        dialog.get_by_role("button", name="Use key").click()
        chat.wait_idle()
        expect(chat.answer).to_contain_text("offline demo model")
        assert fake.requests_for(typed), "the message was not sent after the key was given"
        second = unique("no-second-prompt")
        chat.send(second)
        chat.wait_idle()
        expect(dialog).to_be_hidden()
        stored = chat.page.evaluate("[sessionStorage.getItem('chat-stream.key'), JSON.stringify(localStorage)]")
        assert stored == [TOKEN, "{}"]
        assert all(TOKEN not in address for address in chat.requests)
        assert TOKEN not in chat.page.url


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
    chromium: Browser, site: str, fake: FakeOpenAI
) -> None:
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
            with tab(chromium, site, viewport={"width": width, "height": 760}, color_scheme=scheme) as chat:
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
