"""What a stored conversation adds to the time to first event, and the store calls each request makes.

Two app processes, asked in turn, one stream at a time, with the same client and
upstream: the stateless relay (`CHAT_STORE_URL=none`), and SQLite. The second is sent
new conversations (`"store": true`: no read; the lock and user-turn write runs while
the upstream request opens) and continued ones (`"conversation_id"` of a one-turn
conversation made beforehand: one read before the model is called, then the same
write). Each figure is its median minus the median of the same requests sent to the
upstream alone.

The store calls are counted in an app run in this process (`Store.calls`), per kind
of request, and say which ones the first event waits for.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from chat.app import create_app
from chat.config import Settings
from tests.harness.app_process import KEY, AppProcess, app_env
from tests.harness.support import AppServer
from tools.perf.client import STREAM_PATH, http_client, post
from tools.perf.stream import BENCH_ENV, SERVICE, Conversation, Placement, Target, first_event_seconds, settled

ROWS = [
    ("stored_none", "No store (CHAT_STORE_URL=none): the stateless relay"),
    ("stored_new", 'SQLite, a new stored conversation ("store": true)'),
    ("stored_continued", 'SQLite, a continued conversation ("conversation_id", one turn before)'),
]


async def _new_conversations(client: httpx.AsyncClient, url: str, count: int) -> list[str]:
    started = [await post(client, url, f"opening {n}", {"store": True}) for n in range(count)]
    return [seen.headers["x-conversation-id"] for seen in started]


@dataclass
class SecondTurns(Conversation):
    """Each request continues another one-turn conversation made beforehand: one read, a short history."""

    ids: list[str] = field(default_factory=list)

    def body(self, message: str) -> dict[str, object]:
        return {"message": message, "conversation_id": self.ids.pop()}


async def _added(apps: dict[str, AppProcess], base_url: str, requests: int) -> dict[str, float]:
    async with http_client() as client:
        stored_url = f"{apps['sqlite'].url}{STREAM_PATH}"
        ids = await _new_conversations(client, apps["sqlite"].url, requests + 5)
        targets = {
            "direct": Target(f"{base_url}/chat/completions", direct=True),
            "stored_none": Target(f"{apps['none'].url}{STREAM_PATH}", direct=False),
            "stored_new": Target(stored_url, direct=False, conversation=Conversation(turns=1)),
            "stored_continued": Target(stored_url, direct=False, conversation=SecondTurns(ids=ids)),
        }
        times: dict[str, list[float]] = {name: [] for name in targets}
        for target in targets.values():
            for _ in range(5):
                await first_event_seconds(client, target)
        for app in apps.values():
            await settled(app)
        for index in range(requests):
            order = list(targets.items())
            for name, target in order if index % 2 == 0 else reversed(order):
                times[name].append(await first_event_seconds(client, target))
    alone = statistics.median(times["direct"])
    return {name: (statistics.median(times[name]) - alone) * 1000 for name, _ in ROWS}


def measure(base_url: str, requests: int, placement: Placement) -> dict[str, float]:
    """Milliseconds each variant adds to the first event at one stream (medians), in one run."""
    core = placement[0] if placement is not None else None
    with tempfile.TemporaryDirectory() as folder:
        envs = {
            "none": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL="none"),
            "sqlite": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL=f"sqlite:///{Path(folder) / 'chat.sqlite3'}"),
        }
        with contextlib.ExitStack() as running:
            apps = {name: running.enter_context(AppProcess(env, app=SERVICE, core=core)) for name, env in envs.items()}
            return asyncio.run(_added(apps, base_url, requests))


def store_calls(base_url: str) -> dict[str, collections.Counter[str]]:
    """The store operations one new and one continued stored request make (an app in this process)."""
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            openai_api_key=KEY,
            openai_base_url=base_url,
            openai_model="fake-model",
            store_url=f"sqlite:///{Path(folder) / 'chat.sqlite3'}",
        )
        app = create_app(settings)
        store = app.state.store
        counts: dict[str, collections.Counter[str]] = {}
        conversation_id = ""
        with AppServer(app=app) as server, httpx.Client(timeout=30) as client:
            for kind in ("new", "continued"):
                before = collections.Counter(store.calls)
                fields = {"store": True} if kind == "new" else {"conversation_id": conversation_id}
                response = client.post(f"{server.url}{STREAM_PATH}", json={"message": kind, **fields})
                conversation_id = response.headers["x-conversation-id"]
                counts[kind] = collections.Counter(store.calls) - before
        store.close()
        return counts


# When each store operation runs, relative to the first event.
WHEN = {
    "load": "before the model is called: the first event waits for it",
    "begin_turn": "while the upstream request opens: the first event waits only if it is the slower",
    "stop_requested": "during the answer, every CHAT_STOP_POLL_SECONDS",
    "finish_turn": "after the last token, before the last event",
}


def calls_table(counts: dict[str, collections.Counter[str]]) -> list[list[str]]:
    return [
        [operation, *(str(counts[kind][operation]) for kind in ("new", "continued")), when]
        for operation, when in WHEN.items()
    ]
