"""What identifying the caller and reserving its budget add to the time to first event.

Four app processes on one SQLite store, asked in turn, one stream at a time, with
the same client and upstream: no store at all (`CHAT_STORE_URL=none`, the stateless
relay); the store with `CHAT_AUTH=none` and no budget (usage counted after the
answer, nothing before the model is called); and `CHAT_AUTH=keys` with a key whose
daily budget the request reserves (the key lookup, cached after the first request,
and one conditional write before the model is called); and that keyed app with every
request in a stored conversation of ten turns (the whole path: key, budget, history
read, lock and user turn written while the upstream opens, answer stored before the
last event). Each figure is its median minus the median of the same requests sent to
the upstream alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path

from chat.config import Settings
from tests.harness.app_process import AppProcess, app_env
from tools import keys
from tools.perf.client import STREAM_PATH, http_client
from tools.perf.stream import BENCH_ENV, SERVICE, Conversation, Placement, Target, first_event_seconds, settled


def create_key(store_url: str) -> str:
    """A key named `bench` with a daily budget no benchmark reaches, made with `python -m tools.keys`."""
    status, lines = keys.run(["create", "bench", "--tokens-per-day", "1000000000"], Settings(store_url=store_url))
    if status != 0:
        raise RuntimeError("\n".join(lines))
    return lines[-1]


async def _added(apps: dict[str, AppProcess], base_url: str, key: str, requests: int) -> dict[str, float]:
    direct = Target(f"{base_url}/chat/completions", direct=True)
    targets = {
        name: Target(f"{app.url}{STREAM_PATH}", direct=False, conversation=Conversation() if name == "stored" else None)
        for name, app in apps.items()
    }
    times: dict[str, list[float]] = {name: [] for name in ("direct", *targets)}
    async with http_client() as client:
        client.headers["authorization"] = f"Bearer {key}"  # only the keyed app reads it
        for target in (direct, *targets.values()):
            for _ in range(5):
                await first_event_seconds(client, target)
        for app in apps.values():
            await settled(app)
        for index in range(requests):
            order = [("direct", direct), *targets.items()]
            for name, target in order if index % 2 == 0 else reversed(order):
                times[name].append(await first_event_seconds(client, target))
    alone = statistics.median(times["direct"])
    return {f"callers_{name}": (statistics.median(times[name]) - alone) * 1000 for name in targets}


def measure(base_url: str, requests: int, placement: Placement) -> dict[str, float]:
    """Milliseconds each variant adds to the first event at one stream (medians), in one run."""
    core = placement[0] if placement is not None else None
    with tempfile.TemporaryDirectory() as folder:
        store_url = f"sqlite:///{Path(folder) / 'chat.sqlite3'}"
        key = create_key(store_url)
        envs = {
            "no_store": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL="none"),
            "counted": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL=store_url),
            "keyed": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL=store_url, CHAT_AUTH="keys"),
            "stored": app_env(base_url, **BENCH_ENV, CHAT_STORE_URL=store_url, CHAT_AUTH="keys"),
        }
        with contextlib.ExitStack() as running:
            apps = {name: running.enter_context(AppProcess(env, app=SERVICE, core=core)) for name, env in envs.items()}
            return asyncio.run(_added(apps, base_url, key, requests))
