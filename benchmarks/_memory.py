"""Memory: this process's peak resident memory per phase, and a server's process tree (its Pss
and CPU seconds), sampled from /proc."""

from __future__ import annotations

import os
import resource
import threading


class RssMeter:
    """Records into ``peaks[phase]`` this process's peak resident memory (bytes) during the
    block (the most over repeated blocks of one phase). On Linux the kernel's high-water mark
    is reset at the start (``/proc/self/clear_refs``), so each phase shows its own peak, and an
    enclosing block still sees the peaks of the blocks inside it; elsewhere every phase shows
    the process's peak so far."""

    _open: list[RssMeter] = []

    def __init__(self, peaks: dict[str, int], phase: str) -> None:
        self.peaks, self.phase, self.seen = peaks, phase, 0

    def __enter__(self) -> RssMeter:
        _seen(_high_water())  # the reset below forgets it: the enclosing blocks keep it
        _reset_high_water()
        self.seen = _high_water()
        RssMeter._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        RssMeter._open.remove(self)
        _seen(_high_water())
        self.seen = max(self.seen, _high_water())
        self.peaks[self.phase] = max(self.seen, self.peaks.get(self.phase, 0))


_lifetime_peak = 0


def peak_rss() -> int:
    """This process's peak resident memory so far (bytes), across the meters' resets."""
    _seen(_high_water())
    return _lifetime_peak


def gb(size: float) -> str:
    return f"{size / 1024**3:.2f} GB"


class TreeMemory:
    """The peak resident memory (bytes) of process ``pid`` and its descendants (a database
    server and its backends), sampled from /proc every ``interval`` s in a thread while the
    block runs. Each process counts its proportional set size (Pss), so pages they share
    (PostgreSQL's shared buffers) count once, not once per process; 0 where /proc is not
    readable."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self.peak = tree_pss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_pss(self.pid))


def tree_pss(pid: int) -> int:
    """Pss (bytes) of ``pid`` and all its descendants now; 0 where /proc is not readable."""
    total = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) * 1024 for line in rollup if line[:4] == "Pss:")
        except (OSError, StopIteration, ValueError):
            continue  # it ended meanwhile (a parallel worker), or no /proc here
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants, those that ended included
    (their time is in their parent's cutime/cstime once reaped); 0 without /proc."""
    ticks = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (Linux /proc; just ``pid`` elsewhere)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return found


def _seen(high_water: int) -> None:
    global _lifetime_peak
    _lifetime_peak = max(_lifetime_peak, high_water)
    for meter in RssMeter._open:
        meter.seen = max(meter.seen, high_water)


def _high_water() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _reset_high_water() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        pass
