"""Print when each streamed chunk reached a Runtime API double.

Run: `PYTHONPATH=functions/chat .venv/bin/python -m tests.harness.runtime_trace`.

The evidence behind "chunks leave as the model produces them" (asserted by
test_runtime_loop.py), as a trace a person can read: the fake model sends one
delta every 250 ms; each should arrive about 250 ms after the one before.
"""

from __future__ import annotations

import time

from tests.harness.fake_openai import Delta, Done, FakeOpenAI, Sleep, Step
from tests.harness.lambda_events import function_url_event
from tests.harness.runtime_api_double import RuntimeAPIDouble
from tests.harness.runtime_process import lambda_runtime, runtime_env

INTERVAL = 0.25


def main() -> None:
    steps: list[Step] = []
    for number in range(6):
        steps += [Delta(f"token{number} "), Sleep(INTERVAL)]
    with FakeOpenAI() as fake, RuntimeAPIDouble() as double:
        fake.script("trace", [*steps, Done()])
        with lambda_runtime(runtime_env(fake, AWS_LAMBDA_RUNTIME_API=double.address)):
            double.invoke(function_url_event({"message": "warm up"}))
            started = time.monotonic()
            result = double.invoke(function_url_event({"message": "trace"}))
    print(f"chunks at the Runtime API double, ms after the invoke (a delta every {INTERVAL * 1000:.0f} ms):")
    for arrived, data in result.chunks:
        print(f"  +{(arrived - started) * 1000:7.1f} ms  {len(data):4d} B  {data[-36:]!r}")
    print(f"  /response finished +{(result.finished - started) * 1000:.1f} ms, trailers {result.trailers}")


if __name__ == "__main__":
    main()
