"""How busy the rest of the machine is: cores other processes keep busy (Linux /proc/stat).

The backend timing reads it to tell a measurement made on a quiet machine from one made beside
another job; the watcher (:mod:`vitsearch.machine.cpu`) to make room for other programs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
MIN_WINDOW_SECONDS = 0.5  # shorter windows are mostly scheduler noise


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
        # Ours includes children already waited for (a benchmark's timed subprocesses): they
        # are this program's work, not another program's.
        own = os.times()
        ours = own.user + own.system + own.children_user + own.children_system
        return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), ours
