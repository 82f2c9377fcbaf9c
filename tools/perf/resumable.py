"""The resumable round of `make load`: many resumable answers, each client cut once at a random point and resumed.

Two app processes share one DynamoDB table on moto's server (AWS itself cannot run
here; the table is template.yaml's). Every answer starts on the first; half the clients
resume on the same process (followers fed from memory), half on the other (followers
polling the store, as on another Lambda instance). Each client's text before the cut,
joined with the resumed rest, is compared with the fake model's answer character by
character: none may be missing or doubled, and every stream must end with `[DONE]`.
At most CONCURRENCY answers run at once: moto's server answers one request at a time, and
with 200 answers writing batches and 100 followers polling it falls seconds behind, which
measures moto, not the service.
Afterwards the table is read to count the event batches written per answer.
"""

from __future__ import annotations

import asyncio
import difflib
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from httpx_sse import EventSource

from tests.harness import dynamodb
from tests.harness.app_process import AppProcess, app_env
from tests.harness.fake_openai import Delta, FakeOpenAI, Step
from tools.perf import conversations
from tools.perf.client import STREAM_PATH, http_client
from tools.perf.faults import Options

Script = Callable[[str], Sequence[Step]]
CONCURRENCY = 50


@dataclass
class ResumableRow:
    answers: int
    failed: int
    missing_chars: int
    duplicated_chars: int
    resumed_elsewhere: int
    seconds: float
    writes_p50: float
    writes_max: int
    first_error: str = ""

    @property
    def passed(self) -> bool:
        return self.failed == 0 and self.missing_chars == 0 and self.duplicated_chars == 0


@dataclass
class _Answer:
    text: str = ""
    conversation_id: str = ""
    ids: tuple[str, ...] = ()
    ended: bool = False
    problem: str = ""


async def _events(response: httpx.Response, answer: _Answer, limit: int | None) -> None:
    """Read events into `answer` (at most `limit`, then stop reading: the cut)."""
    count = 0
    async for event in EventSource(response).aiter_sse():
        answer.ids += (event.id,)
        if event.event == "message" and event.data == "[DONE]":
            answer.ended = True
            return
        if event.event != "message":
            answer.problem = f"event:{event.event} {event.data[:60]}"
            return
        answer.text += event.data
        count += 1
        if limit is not None and count >= limit:
            return


async def _cut_and_resume(client: httpx.AsyncClient, urls: tuple[str, str], number: int, chunks: int) -> _Answer:
    answer = _Answer()
    cut = random.randint(1, chunks)  # a cut point, not a secret
    body = {"message": f"resumable {number}", "store": True, "resumable": True}
    try:
        async with client.stream("POST", f"{urls[0]}{STREAM_PATH}", json=body) as response:
            answer.conversation_id = response.headers.get("x-conversation-id", "")
            if response.status_code != 200:
                answer.problem = f"{response.status_code} on the first request"
                return answer
            await _events(response, answer, cut)
        if answer.ended or answer.problem:
            return answer
        resumer = urls[number % 2]
        path = f"{resumer}/api/conversations/{answer.conversation_id}/stream"
        async with client.stream("GET", path, headers={"last-event-id": answer.ids[-1]}) as response:
            if response.status_code != 200:
                answer.problem = f"{response.status_code} on the resume"
                return answer
            await _events(response, answer, None)
    except httpx.HTTPError as error:
        answer.problem = f"{type(error).__name__}: {error}"
    return answer


def _difference(expected: str, got: str) -> tuple[int, int]:
    """(missing, duplicated or extra) characters of `got` against `expected`."""
    missing = extra = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, expected, got, autojunk=False).get_opcodes():
        if tag in ("delete", "replace"):
            missing += i2 - i1
        if tag in ("insert", "replace"):
            extra += j2 - j1
    return missing, extra


def _batches_per_answer(endpoint: str, table: str) -> list[int]:
    """Event batch writes per answer: the stored batch items, plus the empty opening one each first batch replaced."""
    client = dynamodb.client(endpoint)
    counts: dict[str, int] = {}
    for page in client.get_paginator("scan").paginate(TableName=table, ProjectionExpression="pk, sk"):
        for item in page["Items"]:
            if item["sk"]["S"].startswith("EVENTS#"):
                counts[item["pk"]["S"]] = counts.get(item["pk"]["S"], 0) + 1
    return [count + 1 for count in counts.values()]


async def resumable_round(urls: tuple[str, str], script: Script, options: Options) -> tuple[list[_Answer], float]:
    started = time.perf_counter()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, number: int) -> _Answer:
        async with slots:
            return await _cut_and_resume(client, urls, number, options.chunks)

    async with http_client() as client:
        answers = await asyncio.gather(*(one(client, number) for number in range(options.resumable)))
    return answers, time.perf_counter() - started


def run(fake: FakeOpenAI, script: Script, options: Options) -> ResumableRow:
    """The round against two app processes on a fresh table on moto's server."""
    table = f"resume-{time.time_ns()}"
    with dynamodb.moto_server_process() as endpoint:
        dynamodb.create_table(dynamodb.client(endpoint), table)
        env = app_env(fake.base_url, **conversations.ROUND_TIMEOUTS, **dynamodb.server_env(endpoint, table))
        with AppProcess(env) as first, AppProcess(env) as second:
            answers, seconds = asyncio.run(resumable_round((first.url, second.url), script, options))
        writes = _batches_per_answer(endpoint, table)
    missing = extra = 0
    problems = []
    for number, answer in enumerate(answers):
        expected = "".join(step.content or "" for step in script(f"resumable {number}") if isinstance(step, Delta))
        lost, doubled = _difference(expected, answer.text)
        missing, extra = missing + lost, extra + doubled
        if answer.problem or not answer.ended:
            problems.append(answer.problem or "no [DONE]")
    return ResumableRow(
        answers=len(answers),
        failed=len(problems),
        missing_chars=missing,
        duplicated_chars=extra,
        resumed_elsewhere=sum(1 for number in range(len(answers)) if number % 2),
        seconds=seconds,
        writes_p50=statistics.median(writes) if writes else float("nan"),
        writes_max=max(writes, default=0),
        first_error=problems[0] if problems else "",
    )


COLUMNS = (
    ("answers (each cut once)", "{r.answers}"),
    ("at once", str(CONCURRENCY)),
    ("resumed on the other process", "{r.resumed_elsewhere}"),
    ("failed", "{r.failed}"),
    ("chars missing", "{r.missing_chars}"),
    ("chars duplicated", "{r.duplicated_chars}"),
    ("wall s", "{r.seconds:.1f}"),
    ("event writes/answer p50", "{r.writes_p50:.0f}"),
    ("event writes/answer max", "{r.writes_max}"),
)
