"""How busy the rest of the machine is, so a background indexer can make room.

With 2 cores and another process busy on one, a 2-thread forward collapses (OpenMP workers
wait on the core they lost: 3.8 -> ~0.6 images/s measured) while 1 thread holds ~1.8; on an
idle machine 2 threads embed twice as fast as 1. So ``watch`` uses every core while the rest
of the machine is idle and one fewer while something else keeps a core busy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
MIN_WINDOW_SECONDS = 0.5  # shorter windows are mostly scheduler noise
BUSY_CORES = 0.5  # others above this: leave them a core
IDLE_CORES = 0.25  # others below this: take every core again (the gap avoids flapping)


class OtherProcesses:
    """Cores kept busy by other processes since the previous reading (Linux /proc/stat)."""

    def __init__(self, stat: Path = PROC_STAT) -> None:
        self._stat = stat
        self._last = self._sample()

    def busy_cores(self) -> float | None:
        """None until a long enough window has passed, or where /proc/stat is missing."""
        now = self._sample()
        if now is None or self._last is None or now[0] - self._last[0] < MIN_WINDOW_SECONDS:
            return None
        (wall0, machine0, own0), (wall1, machine1, own1) = self._last, now
        self._last = now
        return max(0.0, ((machine1 - machine0) - (own1 - own0)) / (wall1 - wall0))

    def _sample(self) -> tuple[float, float, float] | None:
        try:
            fields = self._stat.read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return None
        # user nice system idle iowait irq softirq steal ...: all but idle and iowait
        ticks = [int(x) for x in fields[:8]]
        busy = sum(ticks) - ticks[3] - ticks[4]
        own = os.times()
        hz = os.sysconf("SC_CLK_TCK")
        return time.monotonic(), busy / hz, own.user + own.system


class AdaptiveThreads:
    """The model's thread count for the next batch: ``cores`` on an otherwise idle machine,
    ``cores - 1`` while other processes keep more than half a core busy."""

    def __init__(self, cores: int, others: OtherProcesses | None = None) -> None:
        self.cores = cores
        self.current = cores
        self._others = others or OtherProcesses()

    def __call__(self) -> int:
        busy = self._others.busy_cores()
        if busy is not None:
            if busy > BUSY_CORES:
                self.current = max(1, self.cores - 1)
            elif busy < IDLE_CORES:
                self.current = self.cores
        return self.current
