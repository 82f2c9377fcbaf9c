"""The conversation round of `make load`: many stored conversations at once, every turn checked in the store.

Each conversation is started with `"store": true` and continued turn after turn with its
`conversation_id`, all conversations concurrently, against the app in its own process
with DynamoDB on moto's server (AWS itself cannot run here; the table is template.yaml's).
Afterwards every conversation is read back: each turn must be there exactly once, in
order, its answer complete (none lost, none duplicated), and no request may have failed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field

import httpx

from tests.harness import dynamodb
from tests.harness.app_process import AppProcess, app_env
from tests.harness.fake_openai import FakeOpenAI
from tools.perf.client import http_client, post
from tools.perf.faults import Options


@dataclass
class ConversationRow:
    conversations: int
    turns: int
    failed_requests: int
    lost_turns: int
    duplicated_turns: int
    seconds: float
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    first_error: str = ""

    @property
    def passed(self) -> bool:
        return self.failed_requests == 0 and self.lost_turns == 0 and self.duplicated_turns == 0


def _message(conversation: int, turn: int) -> str:
    return f"conversation {conversation} turn {turn}"


@dataclass
class _Conversation:
    number: int
    id: str = ""
    acknowledged: list[str] = field(default_factory=list)
    """Messages whose answer ended with [DONE]: these must be in the store, once each."""
    problems: list[str] = field(default_factory=list)
    first_events: list[float] = field(default_factory=list)


async def _converse(client: httpx.AsyncClient, url: str, number: int, options: Options) -> _Conversation:
    """One conversation's turns in sequence."""
    conversation = _Conversation(number)
    for turn in range(options.turns):
        fields: dict[str, object] = {"conversation_id": conversation.id} if conversation.id else {"store": True}
        message = _message(number, turn)
        seen = await post(client, url, message, fields)
        if seen.first_event is not None:
            conversation.first_events.append(seen.first_event)
        conversation.id = conversation.id or seen.headers.get("x-conversation-id", "")
        if seen.status == 200 and seen.messages and seen.messages[-1] == "[DONE]":
            conversation.acknowledged.append(message)
        else:
            conversation.problems.append(seen.describe())
    return conversation


async def _check(client: httpx.AsyncClient, url: str, conversation: _Conversation) -> tuple[int, int]:
    """(lost, duplicated) turns of one conversation, read back from the store.

    Lost: a turn answered with [DONE] whose message or complete answer is not stored.
    Duplicated: a message stored more than once, or more answers than messages."""
    if not conversation.id:
        return len(conversation.acknowledged), 0
    response = await client.get(f"{url}/api/conversations/{conversation.id}")
    stored = response.json()["messages"] if response.status_code == 200 else []
    pairs = list(zip(stored[::2], stored[1::2], strict=False))
    complete = {user["content"] for user, answer in pairs if answer["status"] == "complete" and answer["content"]}
    users = [m["content"] for m in stored if m["role"] == "user"]
    answers = [m for m in stored if m["role"] == "assistant"]
    lost = sum(1 for message in conversation.acknowledged if message not in complete)
    duplicated = len(users) - len(set(users)) + max(0, len(answers) - len(users))
    return lost, duplicated


async def conversation_round(service: AppProcess, options: Options) -> ConversationRow:
    started = time.perf_counter()
    async with http_client() as client:
        runs = await asyncio.gather(
            *(_converse(client, service.url, number, options) for number in range(options.conversations))
        )
        seconds = time.perf_counter() - started
        checks = await asyncio.gather(*(_check(client, service.url, run) for run in runs))
    problems = [problem for run in runs for problem in run.problems]
    firsts = sorted(first for run in runs for first in run.first_events)
    cuts = statistics.quantiles(firsts, n=100) if len(firsts) > 1 else firsts * 99
    return ConversationRow(
        conversations=options.conversations,
        turns=options.turns,
        failed_requests=len(problems),
        lost_turns=sum(lost for lost, _ in checks),
        duplicated_turns=sum(duplicated for _, duplicated in checks),
        seconds=seconds,
        ttfb_p50_ms=statistics.median(firsts) * 1000 if firsts else float("nan"),
        ttfb_p99_ms=cuts[98] * 1000 if cuts else float("nan"),
        first_error=problems[0] if problems else "",
    )


# The round checks what is stored, not timeouts: the service's defaults, whatever the fault cases use.
ROUND_TIMEOUTS = {"OPENAI_FIRST_TOKEN_TIMEOUT": "120", "OPENAI_IDLE_TIMEOUT": "30"}


def run(fake: FakeOpenAI, options: Options) -> ConversationRow:
    """The round against its own app process, its store a fresh table on moto's server."""
    table = f"load-{time.time_ns()}"
    with dynamodb.moto_server_process() as endpoint:
        dynamodb.create_table(dynamodb.client(endpoint), table)
        env = app_env(fake.base_url, **ROUND_TIMEOUTS, **dynamodb.server_env(endpoint, table))
        with AppProcess(env) as service:
            return asyncio.run(conversation_round(service, options))


COLUMNS = (
    ("conversations x turns", "{r.conversations} x {r.turns}"),
    ("failed requests", "{r.failed_requests}"),
    ("turns lost", "{r.lost_turns}"),
    ("turns duplicated", "{r.duplicated_turns}"),
    ("wall s", "{r.seconds:.1f}"),
    ("TTFB p50 ms", "{r.ttfb_p50_ms:.0f}"),
    ("TTFB p99 ms", "{r.ttfb_p99_ms:.0f}"),
)
