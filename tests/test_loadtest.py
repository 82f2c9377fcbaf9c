"""The load and fault harness at test size: every stream succeeds and every fault row passes.

The full-size run (1000 streams of 50 chunks) is `make load` (`python -m tools.perf load`); this runs the same
harness with 50 short streams and short timeouts. Secrets Manager is moto's
server and a local endpoint answering ThrottlingException (AWS itself cannot run here).
"""

from __future__ import annotations

import pytest

from tools.perf.faults import Options
from tools.perf.load import Report, format_report, run

SMALL = Options(
    streams=50,
    chunks=5,
    chunk_interval=0.01,
    rounds=1,
    first_token_timeout=1.0,
    idle_timeout=0.5,
    drip_interval=0.01,
    storm=20,
    disconnects=20,
    conversations=20,
    turns=3,
    resumable=20,
)

FAULT_CASES = [
    "connection reset",
    "truncated body",
    "error object mid-stream",
    "HTML 502 page",
    "429 storm",
    "MiB delta",
    "stall before headers",
    "stall after headers, no token",
    "stall mid-stream",
    "slow drip",
    "random client disconnects",
    "Secrets Manager down",
    "Secrets Manager throttling",
    "Secrets Manager back (moto)",
]


@pytest.fixture(scope="module")
def report() -> Report:
    return run(SMALL)


def test_concurrent_streams_all_succeed_and_leave_nothing_open(report: Report) -> None:
    table = format_report(report)
    [row] = report.load
    assert row.errors == 0, table
    assert row.peak_in_flight > 1, table
    assert row.upstream_in_flight_after == 0, table
    assert row.leftover_tasks <= 0, table
    assert row.passed, table


def test_concurrent_stored_conversations_lose_and_double_nothing(report: Report) -> None:
    row = report.conversations
    assert row is not None
    assert (row.conversations, row.turns) == (20, 3)
    assert (row.failed_requests, row.lost_turns, row.duplicated_turns) == (0, 0, 0), format_report(report)


def test_resumable_answers_cut_and_resumed_lose_and_double_no_character(report: Report) -> None:
    row = report.resumable
    assert row is not None
    assert (row.answers, row.resumed_elsewhere) == (20, 10)
    assert (row.failed, row.missing_chars, row.duplicated_chars) == (0, 0, 0), format_report(report)
    assert row.writes_max >= 2, "every answer writes its opening and its end"


@pytest.mark.parametrize("case", FAULT_CASES)
def test_fault_case_gives_the_client_the_documented_outcome(report: Report, case: str) -> None:
    rows = [row for row in report.faults if case in row.case]
    assert len(rows) == 1, format_report(report)
    assert rows[0].passed, format_report(report)
