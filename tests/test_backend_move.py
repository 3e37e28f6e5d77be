"""A small torch library moved to another backend of its model: all or nothing, ids kept."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FakeEmbedder, draw_album
from vitsearch.errors import ModelMismatchError
from vitsearch.indexer import Indexer
from vitsearch.indexer.backend_move import may_move, move_library
from vitsearch.records import ModelInfo
from vitsearch.store import open_library


def on_onnx(seed: int = 7) -> FakeEmbedder:
    """The fake model's embeddings as another backend makes them: same source, own suffix,
    vectors a little off (the seed of the projection differs)."""
    embedder = FakeEmbedder(seed=seed)
    torch = FakeEmbedder().info
    embedder.info = ModelInfo.made_with(
        torch.name, torch.source, torch.dim, torch.preprocessing, "onnx", "int8"
    )
    return embedder


def indexed(home: Path, *folders: Path) -> None:
    with open_library(home, write=True) as library:
        Indexer(library, FakeEmbedder, batch_size=4).reconcile(list(folders))


def test_every_photo_is_embedded_again_in_one_go_and_keeps_its_id(
    home: Path, tmp_path: Path
) -> None:
    folder = draw_album(tmp_path / "album", 5)[0].parent
    indexed(home, folder)
    with open_library(home, write=True) as library:
        ids = {path: row.id for path, row in library.files_under("/").items()}
        old = {i: library.embedding(i)[0] for i in ids.values()}
        assert may_move(library, photos=600, time_from=500)
        assert not may_move(library, photos=3, time_from=500), "a job smaller than the library"
        assert not may_move(library, photos=600, time_from=5), "a library of time_from photos"
        assert move_library(library, on_onnx(seed=8), batch_size=2, decode_workers=1)
        assert library.model.made_by == "onnx-int8"
        assert {path: row.id for path, row in library.files_under("/").items()} == ids
        new = {i: library.embedding(i)[0] for i in ids.values()}
        assert all(not np.allclose(old[i], new[i]) for i in ids.values())
        assert len(library.vectors) == 5
        with pytest.raises(ModelMismatchError):  # another model is never taken in place
            library.reembed(FakeEmbedder(dim=24, seed=3, name="other").info, "fp32", [])


def test_a_photo_out_of_reach_leaves_the_library_as_it_was(home: Path, tmp_path: Path) -> None:
    away = draw_album(tmp_path / "drive", 2)[0].parent
    folder = draw_album(tmp_path / "album", 2)[0].parent
    indexed(home, away, folder)
    shutil.rmtree(away)  # an unplugged drive: its photos stay in the library, offline
    with open_library(home, write=True) as library:
        fingerprint = library.model.fingerprint
        assert not move_library(library, on_onnx(seed=8), batch_size=2, decode_workers=1)
        assert library.model.fingerprint == fingerprint and library.embedding_count() == 4


def test_taught_labels_keep_a_library_on_its_backend(home: Path, tmp_path: Path) -> None:
    indexed(home, draw_album(tmp_path / "album", 3)[0].parent)
    with open_library(home, write=True) as library:
        library.save_classifier("receipts", b"weights", ["receipts"], 0.9, "fake:7:24")
        assert not may_move(library, photos=600, time_from=500)
