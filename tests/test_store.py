"""SQLite as the source of truth, FAISS as a cache that is caught up or rebuilt from it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import image_entries
from vitsearch.errors import LibraryLockedError, LibraryVersionError, ModelMismatchError
from vitsearch.records import FailedEntry, Filters, ImageEntry, Label, ModelInfo
from vitsearch.store import open_library, writer_pid
from vitsearch.store.library import interrupts_deferred

DIM = 8
INFO = ModelInfo(name="m", fingerprint="sha256:abc", dim=DIM)


def unit_vectors(count: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def entries(root_id: int, vectors: np.ndarray, prefix: str = "/photos/p") -> list[ImageEntry]:
    paths = [f"{prefix}{i}.jpg" for i in range(len(vectors))]
    labels = [(Label("cat", 0.9), Label("dog", 0.1))] * len(vectors)
    return image_entries(vectors, root_id, paths, labels=labels)


def fill(home: Path, count: int = 10, seed: int = 0) -> list[int]:
    """Write ``count`` embedded images through a writer, as the indexer does."""
    with open_library(home, write=True) as library:
        library.adopt_model(INFO, "fp32")
        root = library.root_id("/photos")
        new = entries(root, unit_vectors(count, seed), prefix=f"/photos/s{seed}_")
        return library.write_batch(new, [])


def faiss_ids(home: Path) -> set[int]:
    with open_library(home) as library:
        return set(library.vectors.ids().tolist())


def db_ids(home: Path) -> set[int]:
    with open_library(home) as library:
        return set(library.embedding_ids().tolist())


def test_write_and_read_back(home: Path) -> None:
    ids = fill(home, 5)
    with open_library(home) as library:
        hits = library.hits(ids[::-1], [0.5] * 5)
        assert [hit.id for hit in hits] == ids[::-1]
        assert hits[0].labels == (Label("cat", 0.9), Label("dog", 0.1))
        vector, _labels = library.embedding(ids[0])
        assert vector.dtype == np.float32 and vector.shape == (DIM,)
        assert library.counts().vectors == 5


def test_failure_replaces_embedding_and_keeps_other_rows(home: Path) -> None:
    ids = fill(home, 3)
    with open_library(home, write=True) as library:
        library.write_batch([], [FailedEntry("/photos/s0_1.jpg", 1, 5, 5, "truncated")])
        counts = library.counts()
        assert (counts.images, counts.failed, counts.vectors) == (2, 1, 2)
        assert library.file_at("/photos/s0_1.jpg").id == ids[1]


def test_search_matches_brute_force(home: Path) -> None:
    fill(home, 50, seed=1)
    with open_library(home) as library:
        ids, vectors = next(library.iter_embeddings())
        query = unit_vectors(1, 9)[0]
        found, scores = library.vectors.search(query, 7)
        order = np.argsort(-(vectors @ query))[:7]
        assert found.tolist() == ids[order].tolist()
        assert np.allclose(scores, (vectors @ query)[order], atol=1e-5)


def test_missing_faiss_file_is_rebuilt(home: Path) -> None:
    fill(home, 6)
    (home / "vectors.faiss").unlink()
    assert faiss_ids(home) == db_ids(home) and len(db_ids(home)) == 6


@pytest.mark.parametrize("damage", [b"", b"garbage" * 50])
def test_corrupt_faiss_file_is_rebuilt(home: Path, damage: bytes) -> None:
    fill(home, 6)
    (home / "vectors.faiss").write_bytes(damage)
    assert faiss_ids(home) == db_ids(home)


def test_lagging_faiss_file_is_caught_up(home: Path) -> None:
    fill(home, 4, seed=1)
    stale = (home / "vectors.faiss").read_bytes(), (home / "vectors.faiss.json").read_bytes()
    fill(home, 3, seed=2)
    with open_library(home, write=True) as library:
        first = min(db_ids(home))
        library.delete([first])
        # a changed photo keeps its id but gets a new vector
        row = library.files_under("/photos/")["/photos/s1_1.jpg"]
        changed = entries(1, unit_vectors(1, 77), prefix="/photos/s1_")[0]
        library.write_batch(
            [changed.__class__(**{**changed.__dict__, "path": row.path})], [], update_vectors=False
        )
    (home / "vectors.faiss").write_bytes(stale[0])
    (home / "vectors.faiss.json").write_bytes(stale[1])
    with open_library(home) as library:
        assert set(library.vectors.ids().tolist()) == db_ids(home)
        found, scores = library.vectors.search(unit_vectors(1, 77)[0], 1)
        assert found[0] == row.id and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_reader_does_not_write_faiss(home: Path) -> None:
    fill(home, 3)
    (home / "vectors.faiss").unlink()
    with open_library(home) as library:
        assert len(library.vectors) == 3
    assert not (home / "vectors.faiss").exists()


def test_newer_schema_refused(home: Path) -> None:
    fill(home, 1)
    with sqlite3.connect(home / "library.sqlite3") as db:
        db.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(LibraryVersionError, match="newer vitsearch"):
        open_library(home)


def test_other_model_refused(home: Path) -> None:
    fill(home, 1)
    with open_library(home, write=True) as library, pytest.raises(ModelMismatchError):
        library.adopt_model(ModelInfo("m2", "sha256:other", DIM), "fp32")


def test_second_writer_refused_and_readers_allowed(home: Path) -> None:
    with open_library(home, write=True):
        with pytest.raises(LibraryLockedError, match="is writing to this library"):
            open_library(home, write=True)
        with open_library(home) as reader:
            assert reader.counts().images == 0


def test_lock_of_a_killed_writer_is_taken_over(home: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from vitsearch.store import open_library;"
            f"lib = open_library({str(home)!r}, write=True); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert writer_pid(home) == holder.pid
        with pytest.raises(LibraryLockedError, match=str(holder.pid)):
            open_library(home, write=True)
    finally:
        holder.kill()
        holder.wait()
    assert writer_pid(home) is None
    with open_library(home, write=True) as library:
        assert library.writable


def test_save_includes_rows_committed_but_not_yet_added(home: Path) -> None:
    """Ctrl-C can land between a commit and the in-memory add; the saved file must not lie."""
    fill(home, 2, seed=1)
    with open_library(home, write=True) as library:
        library.vectors  # noqa: B018
        late = entries(1, unit_vectors(3, 5), prefix="/photos/late_")
        library.write_batch(late, [], update_vectors=False)
    import faiss

    on_disk = faiss.read_index(str(home / "vectors.faiss"))
    assert set(faiss.vector_to_array(on_disk.id_map).tolist()) == db_ids(home)
    assert on_disk.ntotal == 5


def test_ctrl_c_while_saving_takes_effect_after_the_file_is_whole() -> None:
    # Python's own Ctrl-C handler, even where the suite was started in the background (a
    # shell without job control starts it with SIGINT ignored, which interrupts_deferred keeps)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = False
        with pytest.raises(KeyboardInterrupt), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # Python runs signal handlers between bytecodes: here, if at all
            finished = True
        assert finished
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_vector_count_reads_the_sidecar_only_when_it_is_in_step(home: Path) -> None:
    fill(home, 5, seed=1)
    with open_library(home) as library:
        assert library.vector_count() == 5
        assert library._vectors is None, "an up-to-date index was loaded just to be counted"
    stale = (home / "vectors.faiss").read_bytes(), (home / "vectors.faiss.json").read_bytes()
    fill(home, 3, seed=2)
    (home / "vectors.faiss").write_bytes(stale[0])
    (home / "vectors.faiss.json").write_bytes(stale[1])
    with open_library(home) as library:
        assert library.vector_count() == 8  # the lagging file is loaded and caught up


def test_pgvector_candidates_grow_with_the_library() -> None:
    from vitsearch.store.postgres import ef_search_for

    sizes = (0, 20_000, 100_000, 300_000, 1_000_000, 5_000_000)
    assert [ef_search_for(n) for n in sizes] == [64, 64, 64, 64, 200, 1000]


@pytest.mark.parametrize("how", ["one file", "a folder"])
def test_a_readers_folder_filter_follows_photos_moved_into_the_folder(home: Path, how: str) -> None:
    """A long-lived reader (the app) remembers a filter's ids; a move changes which photos
    pass it without changing any embedding, and must be seen."""
    ids = fill(home, 4)
    under = Filters(under="/photos/kept")
    with open_library(home) as reader:
        assert reader.allowed_ids(under).tolist() == []
        with open_library(home, write=True) as writer:
            root = writer.root_id("/photos")
            if how == "one file":
                writer.move(ids[0], "/photos/kept/s0_0.jpg", root, 1)
            else:
                writer.move_tree("/photos/s0_1.jpg", "/photos/kept/s0_1.jpg", root)
        reader.refresh()
        assert reader.allowed_ids(under).tolist() == [ids[0] if how == "one file" else ids[1]]
