"""How busy the rest of the machine is, so a background indexer can make room.

With 2 cores and another process busy on one, a 2-thread forward collapses (OpenMP workers
wait on the core they lost) while 1 thread holds on; on an idle machine 2 threads embed twice
as fast as 1 (measured: docs/benchmarks.md). So ``watch`` uses every core while the rest of
the machine is idle and one fewer while something else keeps a core busy.
"""

from __future__ import annotations

from vitsearch.machine.busy import OtherProcesses

BUSY_CORES = 0.5  # others above this: leave them a core
IDLE_CORES = 0.25  # others below this: take every core again (the gap avoids flapping)


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
