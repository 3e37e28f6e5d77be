"""Timing on a shared machine: a call's seconds, the seconds this process was stopped, the cores
other processes kept busy, the load average, and candidates timed taking turns over rounds."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vitsearch.machine.busy import OtherProcesses

Embed = Callable[[np.ndarray], object]  # (n, 3, H, W) pixels -> anything; only timed


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(what ``fn`` returned, seconds it took)."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


class Paused:
    """Seconds this process was stopped during the block (SIGSTOP: another job on a shared
    machine that wants it quiet): a thread waking every ``tick`` s sees the gap when it runs
    again, and the SIGCONT that resumed it tells such a gap from a long call that only held
    the GIL. A figure measured across a pause includes it. Set up in the main thread."""

    def __init__(self, tick: float = 0.05, gap: float = 0.5) -> None:
        self.tick, self.gap, self.seconds = tick, gap, 0.0
        self._gaps: list[float] = []
        self._continued = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Paused:
        self._previous = signal.signal(signal.SIGCONT, self._resumed)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        signal.signal(signal.SIGCONT, self._previous)
        self.seconds = sum(self._gaps) if self._continued else 0.0

    def _resumed(self, _signum: int, _frame: object) -> None:
        self._continued += 1

    def _watch(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            if now - last > self.gap:  # a busy machine delays a wake-up by far less
                self._gaps.append(now - last - self.tick)
            last = now


class CpuMeter:
    """Records into ``busy[phase]`` the cores other processes kept busy during the block
    (the most over repeated blocks of one phase; 0 for a block too short to tell)."""

    def __init__(self, busy: dict[str, float], phase: str) -> None:
        self.busy, self.phase = busy, phase

    def __enter__(self) -> CpuMeter:
        self._others = OtherProcesses()
        return self

    def __exit__(self, *exc) -> None:
        other = self._others.busy_cores() or 0.0
        self.busy[self.phase] = max(other, self.busy.get(self.phase, 0.0))


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


@dataclass(frozen=True)
class Speed:
    best: float  # images/s, best round
    median: float  # images/s, median round
    ratio_best: float  # best / torch fp32's best
    ratio_median: float  # median over rounds of (this / torch fp32 in the same round)


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """Each round starts one candidate later, so none always follows the same neighbour."""
    k = round_index % len(names)
    return [*names[k:], *names[:k]]


def alternate(embeds: dict[str, Embed], batch: np.ndarray, rounds: int) -> dict[str, list[float]]:
    """images/s of each candidate per round, after one untimed warm-up batch each."""
    for embed in embeds.values():
        embed(batch)
    rates: dict[str, list[float]] = {name: [] for name in embeds}
    for r in range(rounds):
        for name in round_order(list(embeds), r):
            started = time.perf_counter()
            embeds[name](batch)
            rates[name].append(len(batch) / (time.perf_counter() - started))
    return rates


def summarise(rates: dict[str, list[float]], reference: str = "torch-fp32") -> dict[str, Speed]:
    """Best and median rates, as ratios to ``reference``'s best and round by round."""
    ref = np.array(rates[reference])
    return {
        name: Speed(
            best=max(values),
            median=statistics.median(values),
            ratio_best=max(values) / ref.max(),
            ratio_median=float(np.median(np.array(values) / ref)),
        )
        for name, values in rates.items()
    }
