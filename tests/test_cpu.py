"""`watch` sizes the model's threads by how busy the rest of the machine is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import FakeEmbedder, draw_album
from vitsearch.config import load_settings
from vitsearch.errors import ConfigError
from vitsearch.indexer import Indexer
from vitsearch.machine.busy import PROC_STAT, OtherProcesses
from vitsearch.machine.cpu import AdaptiveThreads
from vitsearch.store import open_library


class Readings:
    """Other processes' load as a sequence of readings (the machine is the boundary)."""

    def __init__(self, *loads: float | None) -> None:
        self.loads = list(loads)

    def busy_cores(self) -> float | None:
        return self.loads.pop(0)


def test_threads_make_room_for_a_busy_machine_and_take_it_back() -> None:
    policy = AdaptiveThreads(2, Readings(0.0, 0.9, None, 0.4, 0.1, 1.6))
    assert [policy() for _ in range(6)] == [2, 1, 1, 1, 2, 1]
    assert AdaptiveThreads(1, Readings(1.5))() == 1  # never below one


@pytest.mark.skipif(not PROC_STAT.exists(), reason="needs Linux /proc/stat")
def test_another_busy_process_is_seen() -> None:
    others = OtherProcesses()
    spinner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass",
        ]
    )
    try:
        time.sleep(1.2)
        busy = others.busy_cores()
        # at once, before waiting for the spinner (its start-up may take seconds on a busy host)
        again = others.busy_cores()
    finally:
        spinner.wait()
    assert busy is not None and busy > 0.5
    assert again is None, "a reading right after another is too short to trust"


@pytest.mark.skipif(not PROC_STAT.exists(), reason="needs Linux /proc/stat")
def test_our_own_finished_subprocesses_are_not_other_processes() -> None:
    if os.getloadavg()[0] > 0.5:
        pytest.skip("other programs keep this machine busy: the reading would show them")
    others = OtherProcesses()
    spin = "import time\nend = time.time() + 1.2\nwhile time.time() < end: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)  # waited for: its CPU time is ours
    busy = others.busy_cores()
    assert busy is not None and busy < 0.5


class CountedThreads(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.thread_changes: list[int] = []

    def set_threads(self, threads: int) -> bool:
        self.thread_changes.append(threads)
        return True


def test_the_indexer_applies_the_policy_before_each_batch(home: Path, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 12)
    embedder = CountedThreads()
    wanted = iter([2, 1, 1])
    with open_library(home, write=True) as library:
        indexer = Indexer(
            library,
            lambda: embedder,
            batch_size=4,
            model_threads=2,
            threads_policy=lambda: next(wanted),
        )
        assert indexer.reconcile([tmp_path / "album"]).embedded == 12
    assert embedder.thread_changes == [1]
    assert indexer.model_threads == 1


def test_watch_threads_setting() -> None:
    assert load_settings(environ={}).watch_threads == 0  # adapt
    assert load_settings(environ={"VITSEARCH_WATCH_THREADS": "1"}).watch_threads == 1
    with pytest.raises(ConfigError):
        load_settings(environ={}, watch_threads=-1)
