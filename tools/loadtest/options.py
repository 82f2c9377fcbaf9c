"""The sizes and timeouts of one run: every part of the harness reads them, the command line sets them."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Options:
    """Sizes and timeouts of one run; the defaults are the full-size run."""

    streams: int = 1000
    chunks: int = 50
    chunk_interval: float = 0.02
    rounds: int = 2
    first_token_timeout: float = 10.0
    idle_timeout: float = 3.0
    drip_interval: float = 1.0
    storm: int = 200
    disconnects: int = 100
    big_delta_bytes: int = MiB
