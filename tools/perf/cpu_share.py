"""The CPU share Lambda gives a function of a given memory size, imposed on a process here.

Lambda gives 1 vCPU at 1,769 MB and proportionally less below (AWS's documentation).
Where the machine has a writable cgroup v1 cpu controller (/sys/fs/cgroup/cpu, as
root), a child cgroup gets a CFS quota of that share of each 20 ms period: Lambda does
not document its period; 20 ms is what has been observed there
(github.com/pwrdrvr/lambda-dispatch/issues/246). A burst of CPU shorter than the
quota is not slowed at all; a longer one waits out the rest of a period per quota
used. Without such a cgroup the figures are estimated with that same rule from the
CPU time the unlimited process used (as if it were one burst), and the output says so.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FULL_VCPU_MB = 1769
PERIOD_US = 20_000
CPU_CONTROLLER = Path("/sys/fs/cgroup/cpu")


def share_of(memory_mb: int) -> float:
    """Lambda's vCPU share at `memory_mb` (at most one core: the app's loop is one thread)."""
    return min(memory_mb / FULL_VCPU_MB, 1.0)


def cgroup_writable() -> bool:
    return (CPU_CONTROLLER / "cpu.cfs_quota_us").exists() and os.access(CPU_CONTROLLER, os.W_OK)


@dataclass(frozen=True)
class Share:
    """A memory size's CPU share: a cgroup to put processes in, or None where it is only estimated."""

    memory_mb: int
    cgroup: Path | None

    @property
    def fraction(self) -> float:
        return share_of(self.memory_mb)

    def join(self) -> None:
        """Put the calling process in the cgroup (for `preexec_fn`: the child is limited before it runs)."""
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text("0")

    def add(self, pid: int) -> None:
        if self.cgroup is not None:
            (self.cgroup / "cgroup.procs").write_text(str(pid))

    def wall_seconds(self, elapsed: float, cpu_seconds: float) -> float:
        """`elapsed` as measured under the cgroup; without one, estimated from the unlimited figures:
        each full quota of `cpu_seconds` waits out the rest of its period."""
        if self.cgroup is not None:
            return elapsed
        period = PERIOD_US / 1e6
        quota = period * self.fraction
        return elapsed + (cpu_seconds // quota) * (period - quota)


@contextlib.contextmanager
def lambda_share(memory_mb: int) -> Iterator[Share]:
    """The share of `memory_mb`, as a cgroup while the block runs where one can be made; removed after."""
    if not cgroup_writable():
        yield Share(memory_mb, None)
        return
    cgroup = CPU_CONTROLLER / f"chat-stream-perf-{os.getpid()}-{memory_mb}mb"
    cgroup.mkdir()
    try:
        (cgroup / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cgroup / "cpu.cfs_quota_us").write_text(str(max(1000, round(PERIOD_US * share_of(memory_mb)))))
        yield Share(memory_mb, cgroup)
    finally:
        for pid in (cgroup / "cgroup.procs").read_text().split():  # leftovers go back to the root group
            with contextlib.suppress(OSError):
                (CPU_CONTROLLER / "cgroup.procs").write_text(pid)
        cgroup.rmdir()


def describe() -> str:
    if cgroup_writable():
        return f"Lambda CPU shares imposed with a cgroup v1 CFS quota ({PERIOD_US // 1000} ms period)"
    return (
        "Lambda CPU shares ESTIMATED (no writable cgroup v1 cpu controller): each full quota of CPU time "
        f"used adds the rest of a {PERIOD_US // 1000} ms period"
    )
