"""The benchmark's upstream: tests/harness/fake_openai.py in a process of its own, so its CPU is not the app's.

`python -m tools.perf.upstream PORT`. The message chooses the answer: `"relay:N"`
streams N deltas as fast as it can write them, `"hold"` sends one delta then stays
silent until the client leaves, anything else is a short two-delta answer. It serves
until its standard input closes (the benchmark exiting, however it exits).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tests.harness.fake_openai import Delta, FakeOpenAI, Stall, Step, deltas


def bench_script(message: str) -> Sequence[Step]:
    if message.startswith("relay:"):
        return deltas(*["tok"] * int(message.removeprefix("relay:")))
    if message == "hold":
        return [Delta("open"), Stall()]
    return deltas("Hello", " world")


def main() -> None:
    with FakeOpenAI(port=int(sys.argv[1]), default=bench_script):
        sys.stdin.read()


if __name__ == "__main__":
    main()
