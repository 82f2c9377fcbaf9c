"""No fault lets the API key or the bearer token out: not in a response body, a header, or a log line.

The service runs as its own process (tests/harness/app_process.py) with every logger
at DEBUG -- the Powertools logger (POWERTOOLS_LOG_LEVEL), the root logger, uvicorn,
httpx and the openai SDK (OPENAI_LOG) -- and its stdout and stderr are captured
whole. Secrets come from Secrets Manager, which is moto's server (AWS itself cannot
run here); the upstream is the fake OpenAI server checking the key.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from chat.keys import key_hash, new_key
from chat.ledger import KeyRecord, open_ledger
from tests.harness.app_process import AWS_TEST_ENV, AppProcess, app_env
from tests.harness.fake_openai import Delta, FakeOpenAI, Raw, Reply, Reset, Stall, Truncate, deltas, openai_error
from tests.harness.ports import free_ports

ALPHABET = string.ascii_letters + string.digits
KEY = "sk-proj-" + "".join(secrets.choice(ALPHABET) for _ in range(48))
TOKEN = "".join(secrets.choice(ALPHABET) for _ in range(40))
WRONG_TOKEN = "".join(secrets.choice(ALPHABET) for _ in range(40))
MASKED_KEY = f"{KEY[:8]}{'*' * 20}{KEY[-4:]}"
# Named API keys (CHAT_AUTH=keys), as chat.keys.new_key makes them, and what the store keeps of them.
API_KEY, WRONG_API_KEY, DISABLED_API_KEY = (new_key() for _ in range(3))


def fragments(secret: str) -> list[str]:
    """What would betray a secret: any 6 characters of it, or its tail the way OpenAI masks it."""
    windows = [secret[i : i + 6] for i in range(len(secret) - 5)]
    tail = secret[-4:]
    return [*windows, f"*{tail}", f"...{tail}", f"\u2026{tail}"]


SECRET_FRAGMENTS = {
    # "sk-pro", "k-proj", "-proj-" are OpenAI's public prefix, not part of the secret.
    "API key": [piece for piece in fragments(KEY) if piece not in ("sk-pro", "k-proj", "-proj-")],
    "bearer token": fragments(TOKEN),
    "wrong bearer token": fragments(WRONG_TOKEN),
    **{
        f"{label}{what}": fragments(value.removeprefix("csk_") if what == "" else key_hash(value))
        for label, value in (
            ("API key", API_KEY),
            ("wrong API key", WRONG_API_KEY),
            ("disabled API key", DISABLED_API_KEY),
        )
        for what in ("", " hash")
    },
}


def leaks(text: str) -> list[str]:
    return [
        f"{name} fragment {piece!r}" for name, pieces in SECRET_FRAGMENTS.items() for piece in pieces if piece in text
    ]


@dataclass
class Case:
    name: str
    steps: list[object] | None  # upstream script, or None for the default answer
    authorization: str | None = f"Bearer {TOKEN}"
    down: bool = False  # ask the service whose Secrets Manager is unreachable
    keys: bool = False  # ask the service with named API keys (CHAT_AUTH=keys)
    path: str = "/api/chat/stream"


CASES = [
    Case("streams normally", list(deltas("fine"))),
    Case("upstream 401 quoting the key", [openai_error(401, f"Incorrect API key provided: {MASKED_KEY}.")]),
    Case("upstream 401 quoting the whole key", [openai_error(401, f"Bad key {KEY} (...{KEY[-4:]})")]),
    Case(
        "upstream 429",
        [Reply(429, openai_error(429, f"Rate limit for key ...{KEY[-4:]}").body, headers=(("retry-after", "3"),))],
    ),
    Case("upstream 500", [openai_error(500, f"internal error for {KEY}", "server_error")]),
    Case("upstream HTML 502", [Reply(502, f"<html>bad gateway {KEY}</html>".encode(), "text/html")]),
    Case(
        "error mid-stream",
        [Delta("partial"), Raw(f'data: {{"error": {{"message": "key {MASKED_KEY} revoked"}}}}\n\n'.encode())],
    ),
    Case("connection reset", [Delta("partial"), Reset()]),
    Case("truncated body", [Delta("partial"), Truncate()]),
    Case("stall", [Delta("partial"), Stall()]),
    Case("wrong bearer token", None, authorization=f"Bearer {WRONG_TOKEN}"),
    Case("no bearer token", None, authorization=None),
    Case("Secrets Manager down", None, down=True),
    Case("named API key", list(deltas("fine")), authorization=f"Bearer {API_KEY}", keys=True),
    Case("named API key's usage", None, authorization=f"Bearer {API_KEY}", keys=True, path="/api/usage"),
    Case("unknown API key", None, authorization=f"Bearer {WRONG_API_KEY}", keys=True),
    Case("disabled API key", None, authorization=f"Bearer {DISABLED_API_KEY}", keys=True),
    Case("API key in the wrong scheme", None, authorization=f"Basic {API_KEY}", keys=True),
    Case("stack token as the default key", list(deltas("fine")), keys=True),
]


@dataclass
class Outcome:
    status: int
    headers: str
    body: str


@dataclass
class Run:
    outcomes: dict[str, Outcome]
    logs: str


def debug_env(fake: FakeOpenAI, endpoint: str) -> dict[str, str]:
    return app_env(
        fake.base_url,
        **AWS_TEST_ENV,
        AWS_ENDPOINT_URL_SECRETS_MANAGER=endpoint,
        CHAT_STORE_URL="none",
        OPENAI_API_KEY="",
        OPENAI_API_KEY_SECRET_ID="leak/openai",
        CHAT_AUTH_TOKEN_SECRET_ID="leak/token",
        OPENAI_FIRST_TOKEN_TIMEOUT="10",  # the first request imports boto3 and openai at DEBUG; no case stalls first
        OPENAI_IDLE_TIMEOUT="0.5",
        POWERTOOLS_LOG_LEVEL="DEBUG",
        POWERTOOLS_METRICS_DISABLED="false",
        OPENAI_LOG="debug",
        PYTHONUNBUFFERED="1",
    )


def ask(url: str, message: str, case: Case) -> Outcome:
    headers = {} if case.authorization is None else {"authorization": case.authorization}
    if case.path == "/api/usage":
        response = httpx.get(f"{url}{case.path}", headers=headers, timeout=30)
    else:
        response = httpx.post(f"{url}{case.path}", json={"message": message}, headers=headers, timeout=30)
    return Outcome(response.status_code, str(list(response.headers.multi_items())), response.text)


def keys_store(folder: Path) -> str:
    """A SQLite store holding the named keys (the tool's own path: a record with the key's hash)."""
    url = f"sqlite:///{folder / 'keys.sqlite3'}"
    ledger = open_ledger(url)
    assert ledger is not None
    ledger.create_key(KeyRecord("leaky", key_hash(API_KEY), "2026-01-01T00:00:00Z"))
    ledger.create_key(KeyRecord("off", key_hash(DISABLED_API_KEY), "2026-01-01T00:00:00Z", disabled=True))
    ledger.close()
    return url


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """Every case once against a service logging at DEBUG; the outcomes and everything it logged."""
    folder = tmp_path_factory.mktemp("leak")
    moto_port, closed_port = free_ports(2)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{moto_port}"
    aws = boto3.client(
        "secretsmanager",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    aws.create_secret(Name="leak/openai", SecretString=KEY)
    aws.create_secret(Name="leak/token", SecretString=f'{{"token": "{TOKEN}"}}')
    outcomes: dict[str, Outcome] = {}
    try:
        with FakeOpenAI() as fake:
            fake.api_keys = {KEY}
            keys_env = {**debug_env(fake, endpoint), "CHAT_AUTH": "keys", "CHAT_STORE_URL": keys_store(folder)}
            up = AppProcess(debug_env(fake, endpoint), debug_logs=True)
            down = AppProcess(debug_env(fake, f"http://127.0.0.1:{closed_port}"), debug_logs=True)
            keyed = AppProcess(keys_env, debug_logs=True)
            with up, down, keyed:
                for number, case in enumerate(CASES):
                    message = f"case-{number}"
                    if case.steps is not None:
                        fake.script(message, case.steps)  # type: ignore[arg-type]
                    service = down if case.down else keyed if case.keys else up
                    outcomes[case.name] = ask(service.url, message, case)
            yield Run(outcomes, "\n".join((up.output, down.output, keyed.output)))
    finally:
        moto.stop()


def test_the_cases_really_ran_at_debug(run: Run) -> None:
    assert run.outcomes["streams normally"].status == 200
    assert run.outcomes["upstream 401 quoting the key"].status == 502
    assert run.outcomes["wrong bearer token"].status == 401
    assert run.outcomes["Secrets Manager down"].status == 503
    assert run.outcomes["named API key"].status == 200
    assert run.outcomes["named API key's usage"].status == 200
    assert run.outcomes["stack token as the default key"].status == 200
    for refused in ("unknown API key", "disabled API key", "API key in the wrong scheme"):
        assert run.outcomes[refused].status == 401
    loggers = {record.split(":", 2)[1] for record in records(run) if record.startswith("DEBUG:")}
    assert "openai._base_client" in loggers
    assert "botocore.parsers" not in loggers  # capped at INFO by the service: its wire log prints secret values
    assert any(name.startswith(("httpcore", "httpx")) for name in loggers)  # the HTTP stack (httpx2) too
    assert "chat stream finished" in run.logs  # the Powertools logger's JSON lines are captured too


@pytest.mark.parametrize("case", [case.name for case in CASES])
def test_no_response_carries_a_secret(run: Run, case: str) -> None:
    outcome = run.outcomes[case]
    assert leaks(outcome.body) == [], outcome.body
    assert leaks(outcome.headers) == [], outcome.headers


RECORD_START = re.compile(r"^(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):|\{)")


def records(run: Run) -> list[str]:
    """Log records, each with its continuation lines (botocore puts a response body on the next line)."""
    found: list[str] = []
    for line in run.logs.splitlines():
        if RECORD_START.match(line) or not found:
            found.append(line)
        else:
            found[-1] += "\n" + line
    return found


def _botocore(record: str) -> bool:
    return record.startswith("DEBUG:botocore.")


def _leaking(run: Run, keep: Callable[[str], bool]) -> list[tuple[list[str], str]]:
    return [(leaks(record)[:3], record[:200]) for record in records(run) if keep(record) and leaks(record)]


def test_no_log_record_outside_botocore_carries_a_secret(run: Run) -> None:
    assert _leaking(run, lambda record: not _botocore(record)) == []


def test_botocore_wire_logs_carry_no_secret(run: Run) -> None:
    assert _leaking(run, _botocore) == []
