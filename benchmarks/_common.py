"""What the benchmark scripts share (run them as ``python benchmarks/bench_X.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vitsearch.app import open_app
from vitsearch.config import Settings
from vitsearch.indexer import Summary


def index_folders(settings: Settings, folders: Sequence[Path]) -> Summary:
    """``vitsearch index FOLDERS`` as a library call: open the app, index, close."""
    with open_app(settings, write=True) as writer:
        return writer.index(folders)
