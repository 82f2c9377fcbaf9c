"""`make bench` in miniature: the command runs end to end and prints its whole table.

Tiny sizes and one run, without the package build; figures are checked to be
numbers, never against the targets (timing belongs to the benchmark, not the tests).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tools.perf import stored
from tools.perf.bench import CALLER_ROWS

ROOT = Path(__file__).resolve().parent.parent
FIGURE = re.compile(r"^-?[\d,]+(\.\d+)?( \(-?[\d,]+(\.\d+)?\N{EN DASH}-?[\d,]+(\.\d+)?\))?$")
STREAM_ROWS = (
    "Added time to first event, 1 stream, median (ms)",
    "Added time to first event, 1 stream, p90 (ms)",
    "Added time to first event, 5 streams, median (ms)",
    "Added time to first event, 5 streams, p90 (ms)",
    "App CPU per request, two-event answer (ms)",
    "Relay cost (CPU-s per 10,000 events)",
    "Relay rate, 2 streams, upstream not waiting (events/s)",
    "App's core busy during that relay (%)",
    "Base RSS after warm-up (MiB)",
    "RSS per open stream, 5 streams open (KiB)",
    "Added time to first event, 1 stream, app at 512 MB's CPU share (ms)",
    "Added time to first event, 1 stream, app at 1024 MB's CPU share (ms)",
    "Added time to first event, 1 stream, app at 1769 MB's CPU share (ms)",
)


def test_quick_bench_prints_every_row_with_figures() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.perf", "bench", "--quick", "--runs", "1", "--skip-cold-start"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tables = [block.splitlines() for block in result.stdout.split("\n\n") if block.startswith("|")]
    table, callers, stored_rows, calls = tables
    assert [cell.strip() for cell in table[0].strip("|").split("|")] == [
        "Measure",
        "service: median (min\N{EN DASH}max)",
        "Target",
        "Met",
    ]
    cells = {row[0]: row[1:] for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in table[2:])}
    assert list(cells) == list(STREAM_ROWS)
    for label, (figure, target, met) in cells.items():
        assert FIGURE.match(figure), f"{label}: {figure!r}"
        assert (target, met) == ("", "") or (target.startswith("≤ ") and met in ("yes", "**no**")), label
    caller_rows = {
        row[0]: row[1] for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in callers[2:])
    }
    assert list(caller_rows) == [label for _, label in CALLER_ROWS] + [
        "Key lookup + reservation, over the stateless relay"
    ]
    for label, figure in caller_rows.items():
        assert FIGURE.match(figure), f"{label}: {figure!r}"
    stored_cells = {
        row[0]: row[1] for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in stored_rows[2:])
    }
    assert list(stored_cells) == [label for _, label in stored.ROWS] + [
        "Storing, new, over the stateless relay",
        "Storing, continued, over the stateless relay",
    ]
    for label, figure in stored_cells.items():
        assert FIGURE.match(figure), f"{label}: {figure!r}"
    counted = {
        row[0]: row[1:3] for row in ([cell.strip() for cell in line.strip("|").split("|")] for line in calls[2:])
    }
    # A new conversation reads nothing before the model is called; a continued one reads once.
    assert counted["load"] == ["0", "1"]
    assert counted["begin_turn"] == counted["finish_turn"] == ["1", "1"]
