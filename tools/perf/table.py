"""The performance harness's one output format: a Markdown table, columns padded to line up in a terminal."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    line = "| " + " | ".join(f"{{:<{width}}}" for width in widths) + " |"
    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line.format(*headers), rule, *(line.format(*row) for row in rows)])
