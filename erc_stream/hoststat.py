"""The whole machine's CPU time from /proc/stat, to say what a speed figure was measured on.

On a virtual machine the hypervisor may give the physical cores to other guests; the time this
guest wanted to run and could not is counted as *steal*. A training epoch or a benchmark that ran
while a large share of its CPU time was withheld measures the host as much as the code: session 27
saw a MiniLM fit on this project's 2-core VM fall from 16 to 9-11 utterances/s within one epoch while
steal rose from under 1% to 18-23% of the machine's CPU time. Linux only; elsewhere every reader
here returns None.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuTicks", "read_cpu_ticks", "steal_share"]

PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTicks:
    """Cumulative CPU time of all CPUs since boot, in clock ticks (``os.sysconf("SC_CLK_TCK")`` a second)."""

    busy: int  # user, nice, system, irq, softirq and steal: time the CPUs ran or wanted to run
    steal: int  # of ``busy``: time the hypervisor withheld
    total: int  # busy plus idle and iowait

    def seconds(self) -> dict[str, float]:
        hz = os.sysconf("SC_CLK_TCK")
        return {"busy_s": self.busy / hz, "steal_s": self.steal / hz, "total_s": self.total / hz}


def read_cpu_ticks(path: Path = PROC_STAT) -> CpuTicks | None:
    """The first ("cpu") line of /proc/stat; None where it cannot be read or parsed."""
    try:
        first = path.read_text().split("\n", 1)[0].split()
        if first[0] != "cpu":
            return None
        ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    if len(ticks) < 8:  # a kernel without a steal column
        return None
    idle = ticks[3] + ticks[4]
    return CpuTicks(busy=sum(ticks) - idle, steal=ticks[7], total=sum(ticks))


def steal_share(busy: float, steal: float) -> float | None:
    """The share of the CPU time asked for (busy, steal included) that the hypervisor withheld, both in
    one unit (ticks or seconds); None when nothing was asked for."""
    if busy <= 0:
        return None
    return min(1.0, max(0.0, steal / busy))
