"""benchmarks/bench_watch.py reads the watcher's log: its pattern must match what we log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.helpers import FakeEmbedder, benchmark_module, draw_album, draw_photo
from vitsearch.indexer.reconcile import Indexer
from vitsearch.store import open_library


def test_the_commit_pattern_reads_batches_of_one_and_of_many(
    home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    draw_album(tmp_path / "album", 3)
    (tmp_path / "album" / "broken.jpg").write_bytes(b"not a jpeg")
    embedder = FakeEmbedder()
    caplog.set_level(logging.INFO, logger="vitsearch")
    with open_library(home, write=True) as library:
        indexer = Indexer(library, lambda: embedder, batch_size=8, decode_workers=1)
        indexer.reconcile([tmp_path / "album"])
        draw_photo(tmp_path / "album" / "one-more.jpg", seed=99)
        indexer.reconcile([tmp_path / "album"])
    with benchmark_module("bench_watch") as bench:
        found = [m for r in caplog.records if (m := bench.COMMIT_LINE.search(r.getMessage()))]
    assert [(int(m[1]), int(m[2])) for m in found] == [(3, 1), (1, 0)]
    assert all(float(m[3]) >= 0 for m in found)
