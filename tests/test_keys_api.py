"""Named API keys and token budgets through the HTTP API, on both store backends.

Real parts: the app under uvicorn, the openai SDK against the fake model (which reports
usage like OpenAI), keys made with `tools.keys` itself, and the store: SQLite on a temp
file, or DynamoDB through moto in process (AWS itself cannot run here; the table comes
from template.yaml). The clock of budget windows is injected to cross a UTC midnight.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from chat.app import create_app
from chat.config import Settings
from chat.keys import key_hash
from chat.usage import estimate_messages, prompt_bound
from tests.harness import dynamodb
from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Hold, Reset, UsageChunk, deltas
from tests.harness.support import AppServer, post_stream, settings_for, unique
from tools import keys as keys_tool


def tool(settings: Settings, *argv: str) -> list[str]:
    status, lines = keys_tool.run(list(argv), settings)
    assert status == 0, lines
    return lines


def create_key(settings: Settings, name: str, *budget: str) -> str:
    """A new key, as `python -m tools.keys create` prints it: alone on the last line."""
    return tool(settings, "create", name, *budget)[-1]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def usage(url: str, key: str | None = None) -> tuple[int, Any, httpx.Headers]:
    response = httpx.get(f"{url}/api/usage", headers=bearer(key) if key else {}, timeout=10)
    return response.status_code, response.json(), response.headers


def test_a_key_made_by_the_tool_streams_and_its_usage_is_counted(fake: FakeOpenAI, store_url: str) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys")
    key = create_key(settings, "alice", "--tokens-per-day", "5000")
    message = fake.script(unique("alice"), deltas("Hello", " there"))
    with AppServer(settings) as server:
        result = post_stream(server.url, {"message": message}, headers=bearer(key))
        assert result.events == [("message", "Hello"), ("message", " there"), ("message", "[DONE]")]
        status, report, _ = usage(server.url, key)
    used = fake.requests_for(message)[0].prompt_tokens + 2  # what the fake model reported
    assert status == 200
    assert report["day"]["used"] == used
    assert report["day"]["limit"] == 5000
    assert report["day"]["remaining"] == 5000 - used
    assert report["month"] == {
        "used": used,
        "limit": None,
        "remaining": None,
        "resets_at": report["month"]["resets_at"],
    }
    tomorrow = datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)
    assert report["day"]["resets_at"] == f"{tomorrow:%Y-%m-%d}T00:00:00Z"
    listing = "\n".join(tool(settings, "usage", "alice"))
    assert f"{used}/5000" in listing


@pytest.mark.parametrize("authorization", [None, "Bearer csk_not-a-key-at-all", "Bearer", "Basic abc"])
def test_a_missing_or_unknown_key_is_a_401_with_www_authenticate(
    fake: FakeOpenAI, store_url: str, authorization: str | None
) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys")
    headers = {} if authorization is None else {"authorization": authorization}
    with AppServer(settings) as server:
        result = post_stream(server.url, {"message": "hi"}, headers=headers)
        status, _, usage_headers = usage(server.url)
    assert result.status == 401
    assert result.headers["www-authenticate"] == "Bearer"
    assert json.loads(result.raw) == {"error": "Missing or invalid API key."}
    assert (status, usage_headers["www-authenticate"]) == (401, "Bearer")


def test_a_disabled_key_is_refused_within_the_cache_time(fake: FakeOpenAI, store_url: str) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys", key_cache_seconds=0.5)
    key = create_key(settings, "bob")
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": "hi"}, headers=bearer(key)).status == 200
        tool(settings, "disable", "bob")
        disabled = time.monotonic()
        while post_stream(server.url, {"message": "hi"}, headers=bearer(key)).status == 200:
            assert time.monotonic() - disabled < 2.5, "the disabled key still works past the cache time"
            time.sleep(0.05)
        refused = post_stream(server.url, {"message": "hi"}, headers=bearer(key))
        assert (refused.status, refused.headers["www-authenticate"]) == (401, "Bearer")
        tool(settings, "enable", "bob")
        time.sleep(0.6)
        assert post_stream(server.url, {"message": "hi"}, headers=bearer(key)).status == 200
        tool(settings, "delete", "bob")
        time.sleep(0.6)
        assert post_stream(server.url, {"message": "hi"}, headers=bearer(key)).status == 401


def test_the_tool_lists_and_refuses_what_it_cannot_do(fake: FakeOpenAI, store_url: str) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys", budget_tokens_per_month=9000)
    lines = tool(settings, "create", "carol", "--tokens-per-day", "100")
    assert lines[-1].startswith("csk_")
    assert lines[-1] not in "\n".join(lines[:-1])
    assert "carol" in lines[0]
    create_key(settings, "dave")
    tool(settings, "disable", "dave")
    listing = tool(settings, "list")
    assert listing[0].split() == ["NAME", "STATE", "TOKENS/DAY", "TOKENS/MONTH", "CREATED"]
    assert listing[1].split()[:4] == ["carol", "enabled", "100", "9000"]
    assert listing[2].split()[:2] == ["dave", "disabled"]
    assert lines[-1] not in "\n".join(listing)
    for argv, refusal in [
        (["create", "carol"], "exists already"),
        (["create", "default"], "reserved"),
        (["disable", "nobody"], "No key named 'nobody'"),
        (["delete", "nobody"], "No key named 'nobody'"),
        (["usage", "nobody"], "No key named 'nobody'"),
    ]:
        status, output = keys_tool.run(argv, settings)
        assert status == 1
        assert refusal in output[0], output


def reservation_for(message: str, max_tokens: int) -> int:
    """What a request with `message` reserves: the most its prompt can be, plus `OPENAI_MAX_TOKENS`."""
    return prompt_bound([{"role": "user", "content": message}]) + max_tokens


def test_fifty_concurrent_requests_against_a_budget_that_admits_ten(fake: FakeOpenAI, store_url: str) -> None:
    """Admitted answers hold their reservation (the model holds them open) until every request has been
    either refused or admitted; then they finish and are reconciled."""
    release = threading.Event()
    message = fake.script(unique("race"), [Delta("one"), Hold(release), Delta(" two"), Done()])
    per_request = reservation_for(message, 100)
    settings = settings_for(fake, store_url=store_url, auth="keys", openai_max_tokens=100, idle_timeout=30)
    key = create_key(settings, "racer", "--tokens-per-day", str(per_request * 10 + per_request // 2))

    async def race(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=60)) as client:
            one = f"{url}/api/chat/stream"
            tasks = [
                asyncio.ensure_future(client.post(one, json={"message": message}, headers=bearer(key)))
                for _ in range(50)
            ]
            while sum(task.done() for task in tasks) + len(fake.requests_for(message)) < 50:
                await asyncio.sleep(0.02)
            release.set()
            return await asyncio.gather(*tasks)

    with AppServer(settings) as server:
        responses = asyncio.run(race(server.url))
        status, report, _ = usage(server.url, key)
    admitted = [response for response in responses if response.status_code == 200]
    refused = [response for response in responses if response.status_code == 429]
    assert (len(admitted), len(refused)) == (10, 40)
    for response in admitted:
        assert response.text.endswith("data:[DONE]\n\n")
    midnight = datetime.datetime.combine(
        datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1), datetime.time(), datetime.UTC
    )
    for response in refused:
        assert "daily budget" in response.json()["error"]
        retry_after = int(response.headers["retry-after"])
        assert abs(retry_after - (midnight - datetime.datetime.now(datetime.UTC)).total_seconds()) < 60
    reported = fake.requests_for(message)[0].prompt_tokens + 2
    assert len(fake.requests_for(message)) == 10  # refused requests never reached the model
    assert status == 200
    assert report["day"]["used"] == 10 * reported  # reconciled to what the model reported, exactly
    assert report["month"]["used"] == 10 * reported


def test_a_prompt_the_estimate_undercounts_cannot_take_a_caller_past_its_budget(
    fake: FakeOpenAI, store_url: str
) -> None:
    """60 KB of "1 " is 60,000 tokens for OpenAI's tokenizers (each digit and each space its own piece), four
    times the rule-of-thumb estimate: the reservation must count what the prompt can be, not what it usually is."""
    message = "1 " * 30_000
    fake.script(message, [Delta("ok"), UsageChunk(60_000, 1), Done()])
    settings = settings_for(fake, store_url=store_url, auth="keys", openai_max_tokens=100)
    key = create_key(settings, "eve", "--tokens-per-day", "20000")
    with AppServer(settings) as server:
        result = post_stream(server.url, {"message": message}, headers=bearer(key))
        _, report, _ = usage(server.url, key)
    assert result.status == 429
    assert "daily budget of 20000" in json.loads(result.raw)["error"]
    assert not fake.requests_for(message)  # refused before the model was called
    assert report["day"]["used"] == 0


def test_a_request_bigger_than_the_whole_budget_is_told_so_without_a_retry_after(
    fake: FakeOpenAI, store_url: str
) -> None:
    """Without OPENAI_MAX_TOKENS each request reserves CHAT_RESERVE_COMPLETION_TOKENS (4096) for its answer: a
    2000/day key can never make one, and saying "used up, retry tomorrow" would be a lie repeated every day."""
    settings = settings_for(fake, store_url=store_url, auth="keys")
    created = tool(settings, "create", "small", "--tokens-per-day", "2000")
    assert any("no request can fit" in line and "4096" in line for line in created[:-1]), created
    assert created[-1].startswith("csk_")  # the key is still alone on the last line
    message = unique("small")
    with AppServer(settings) as server:
        refused = post_stream(server.url, {"message": message}, headers=bearer(key := created[-1]))
        _, report, _ = usage(server.url, key)
    assert refused.status == 429
    assert "retry-after" not in refused.headers
    error = json.loads(refused.raw)["error"]
    assert f"could use up to {reservation_for(message, 4096)} tokens" in error
    assert "more than your daily budget of 2000 tokens" in error
    assert "used up" not in error
    assert report["day"] == {**report["day"], "used": 0, "remaining": 2000}


class Clock:
    def __init__(self, start: datetime.datetime) -> None:
        self.now = start

    def __call__(self) -> datetime.datetime:
        return self.now


def test_a_budget_resets_with_its_utc_window(fake: FakeOpenAI, store_url: str) -> None:
    clock = Clock(datetime.datetime(2026, 3, 31, 23, 59, 30, tzinfo=datetime.UTC))
    message = fake.script(unique("window"), deltas("ok"))
    settings = settings_for(fake, store_url=store_url, auth="keys", openai_max_tokens=50)
    # Room for one reservation; once it is reconciled to the few tokens used, not for a second.
    key = create_key(settings, "erin", "--tokens-per-day", str(reservation_for(message, 50) + 5))
    with AppServer(app=create_app(settings, clock=clock)) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).status == 200
        refused = post_stream(server.url, {"message": message}, headers=bearer(key))
        assert refused.status == 429
        assert refused.headers["retry-after"] == "30"
        error = json.loads(refused.raw)["error"]
        assert "would exceed what is left of your daily budget" in error
        assert "resets at 2026-04-01T00:00:00Z" in error
        clock.now = datetime.datetime(2026, 4, 1, 0, 0, 1, tzinfo=datetime.UTC)
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).status == 200
        _, report, _ = usage(server.url, key)
    assert report["day"]["resets_at"] == "2026-04-02T00:00:00Z"
    assert report["month"]["resets_at"] == "2026-05-01T00:00:00Z"
    assert report["month"]["used"] == report["day"]["used"]  # March's tokens are not April's


def test_the_monthly_budget_names_itself(fake: FakeOpenAI, store_url: str) -> None:
    clock = Clock(datetime.datetime(2026, 12, 31, 12, 0, tzinfo=datetime.UTC))
    message = fake.script(unique("month"), deltas("ok"))
    settings = settings_for(fake, store_url=store_url, auth="keys", openai_max_tokens=50)
    key = create_key(settings, "frank", "--tokens-per-month", str(reservation_for(message, 50)))
    with AppServer(app=create_app(settings, clock=clock)) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).status == 200
        refused = post_stream(server.url, {"message": message}, headers=bearer(key))
    assert refused.status == 429
    assert "monthly budget" in json.loads(refused.raw)["error"]
    assert refused.headers["retry-after"] == str(12 * 3600)  # to 2027-01-01T00:00:00Z


def test_the_deployment_wide_daily_cap_stops_every_caller(fake: FakeOpenAI, store_url: str) -> None:
    message = fake.script(unique("cap"), deltas("ok"))
    reservation = reservation_for(message, 50)
    settings = settings_for(
        fake, store_url=store_url, auth="keys", openai_max_tokens=50, deployment_tokens_per_day=reservation + 5
    )
    first, second = create_key(settings, "gina"), create_key(settings, "hank")
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(first)).status == 200
        # After reconciliation the deployment has used far less than the reservation, but not enough
        # is left for the second caller's whole reservation.
        refused = post_stream(server.url, {"message": message}, headers=bearer(second))
        assert refused.status == 429
        assert "would exceed what is left of the deployment's daily budget" in json.loads(refused.raw)["error"]
        assert int(refused.headers["retry-after"]) > 0
        # A request bigger than the whole cap would wait for nothing.
        never = post_stream(server.url, {"message": message + " " + "x" * 400}, headers=bearer(second))
        assert never.status == 429
        assert "more than the deployment's daily budget" in json.loads(never.raw)["error"]
        assert "retry-after" not in never.headers


def test_the_tools_usage_has_a_deployment_row_only_with_a_cap(fake: FakeOpenAI, store_url: str) -> None:
    """The deployment's counter is written only when a cap is configured: without one a row would show 0."""
    message = fake.script(unique("row"), deltas("ok"))
    settings = settings_for(fake, store_url=store_url, auth="keys")
    key = create_key(settings, "lena")
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).status == 200
    assert not [line for line in tool(settings, "usage") if line.startswith("(deployment)")]
    capped = settings_for(fake, store_url=store_url, auth="keys", deployment_tokens_per_day=100_000)
    with AppServer(capped) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).status == 200
    (row,) = [line for line in tool(capped, "usage") if line.startswith("(deployment)")]
    assert row.split()[1] == f"{fake.requests_for(message)[0].prompt_tokens + 1}/100000"  # the capped day only


def test_the_stacks_token_is_the_key_named_default_in_the_tools_usage(
    fake: FakeOpenAI, aws: Any, tmp_path: Path
) -> None:
    """The stack's generated token (in Secrets Manager: moto, AWS itself cannot run here) is the key `default`."""
    token = "stack-token-" + "t" * 32
    arn = aws.create_secret(Name="chat/stack-token", SecretString=token)["ARN"]
    settings = settings_for(
        fake, store_url=f"sqlite:///{tmp_path / 'chat.sqlite3'}", auth="keys", auth_token_secret_id=arn
    )
    assert [line.split()[0] for line in tool(settings, "usage")[1:-1]] == []  # unused: no row
    message = fake.script(unique("default"), deltas("ok"))
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(token)).status == 200
    used = fake.requests_for(message)[0].prompt_tokens + 1
    assert tool(settings, "usage", "default")[1].split() == ["default", f"{used}/-", f"{used}/-"]
    assert [line.split()[0] for line in tool(settings, "usage")[1:-1]] == ["default"]
    for verb in ("disable", "enable", "delete"):
        status, output = keys_tool.run([verb, "default"], settings)
        assert status == 1
        assert "rotate" in output[0], output


def test_local_callers_get_the_default_budgets(fake: FakeOpenAI, store_url: str) -> None:
    message = fake.script(unique("local"), deltas("ok"))
    settings = settings_for(fake, store_url=store_url, openai_max_tokens=50, budget_tokens_per_day=10_000)
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": message}).status == 200
        status, report, _ = usage(server.url)
    assert status == 200
    assert report["day"]["limit"] == 10_000
    assert report["day"]["used"] == fake.requests_for(message)[0].prompt_tokens + 1


def test_without_a_store_usage_is_a_404_and_streams_still_work(fake: FakeOpenAI) -> None:
    with AppServer(settings_for(fake)) as server:
        assert post_stream(server.url, {"message": "hi"}).status == 200
        status, body, _ = usage(server.url)
    assert status == 404
    assert "CHAT_STORE_URL=none" in body["error"]


def test_a_cut_stream_is_charged_its_estimate(fake: FakeOpenAI, store_url: str) -> None:
    message = fake.script(unique("cut"), [Delta("partial"), Reset()])
    settings = settings_for(fake, store_url=store_url, auth="keys", openai_max_tokens=50)
    key = create_key(settings, "ivy", "--tokens-per-day", "100000")
    with AppServer(settings) as server:
        assert post_stream(server.url, {"message": message}, headers=bearer(key)).events[-1][0] == "error"
        _, report, _ = usage(server.url, key)
    assert report["day"]["used"] == estimate_messages([{"role": "user", "content": message}]) + 2  # "partial"


def test_the_stored_hash_is_not_the_key(fake: FakeOpenAI, store_url: str, tmp_path: Path) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys")
    key = create_key(settings, "jack")
    if store_url.startswith("sqlite"):
        stored = b"".join(path.read_bytes() for path in (tmp_path / "data").iterdir())
    else:
        stored = json.dumps(dynamodb.client().scan(TableName="chat")["Items"]).encode()
    assert key_hash(key).encode() in stored
    assert key.encode() not in stored
    assert key.removeprefix("csk_")[:12].encode() not in stored


def test_a_keys_conversations_belong_to_its_name(fake: FakeOpenAI, store_url: str) -> None:
    settings = settings_for(fake, store_url=store_url, auth="keys")
    alice, bob = create_key(settings, "alice"), create_key(settings, "bob")
    with AppServer(settings) as server:
        started = post_stream(server.url, {"message": "remember this", "store": True}, headers=bearer(alice))
        conversation = started.headers["x-conversation-id"]
        own = httpx.get(f"{server.url}/api/conversations/{conversation}", headers=bearer(alice), timeout=10)
        foreign = httpx.get(f"{server.url}/api/conversations/{conversation}", headers=bearer(bob), timeout=10)
        listed = httpx.get(f"{server.url}/api/conversations", headers=bearer(bob), timeout=10)
        anonymous = httpx.get(f"{server.url}/api/conversations", timeout=10)
    assert own.status_code == 200
    assert foreign.status_code == 404
    assert listed.json()["conversations"] == []
    assert (anonymous.status_code, anonymous.headers["www-authenticate"]) == (401, "Bearer")


def test_a_client_leaving_while_its_usage_is_counted_is_charged_what_it_used(fake: FakeOpenAI, tmp_path: Path) -> None:
    """The ledger's one writer is busy with another request (its reservation waits on a locked SQLite file)
    when an answer ends; that answer's client leaves before its reconciliation gets a turn. The
    reconciliation must still run: the caller pays what the model counted, not the reservation."""
    path = tmp_path / "chat.sqlite3"
    settings = settings_for(fake, store_url=f"sqlite:///{path}", auth="keys", openai_max_tokens=100, idle_timeout=30)
    key = create_key(settings, "leaver", "--tokens-per-day", "100000")
    release = threading.Event()
    leaving = fake.script(unique("leaving"), [Delta("one"), Hold(release), Delta(" two"), Done()])
    other = fake.script(unique("other"), deltas("x"))
    with AppServer(settings) as server:
        with (
            httpx.Client(timeout=30) as client,
            client.stream(
                "POST", f"{server.url}/api/chat/stream", json={"message": leaving}, headers=bearer(key)
            ) as response,
        ):
            chunks = response.iter_raw()  # kept: a dropped iterator closes the response
            assert b"one" in next(chunks)
            lock = sqlite3.connect(path, isolation_level=None)
            lock.execute("BEGIN IMMEDIATE")  # as another process writing
            queued = threading.Thread(
                target=post_stream, args=(server.url, {"message": other}), kwargs={"headers": bearer(key)}
            )
            queued.start()
            time.sleep(0.3)  # the other request's reservation now holds the ledger's writer, waiting on the lock
            release.set()  # the answer ends: its reconciliation queues behind that reservation
            time.sleep(0.3)
        time.sleep(0.3)  # the client has left
        lock.execute("ROLLBACK")
        lock.close()
        queued.join(30)
        status, report, _ = usage(server.url, key)
    reported = {message: fake.requests_for(message)[0].prompt_tokens for message in (leaving, other)}
    assert status == 200
    assert report["day"]["used"] == reported[leaving] + 2 + reported[other] + 1
