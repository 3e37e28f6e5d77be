"""The library in PostgreSQL (pgvector): the same behaviours as the embedded library, against
a real server started by the test session (tests/server_fixtures.py), never a mock."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FakeEmbedder, draw_album, draw_photo, image_entries
from vitsearch.errors import LibraryLockedError, LibraryNotEmptyError, ModelMismatchError
from vitsearch.explore.duplicates import find_duplicates
from vitsearch.indexer import Indexer
from vitsearch.records import FailedEntry, Filters, Label, ModelInfo
from vitsearch.search.query import nearest, search_by_image
from vitsearch.store import copy_library, open_library, writer_pid

pytestmark = pytest.mark.server

DIM = 8
INFO = ModelInfo(name="m", fingerprint="sha256:abc", dim=DIM)


def unit_vectors(count: int, seed: int, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def fill(home: Path, store: str | None, count: int = 10, seed: int = 0, prefix: str = "/photos/p"):
    """``count`` embedded photos written through a writer, as the indexer does: their ids."""
    with open_library(home, write=True, store=store) as library:
        library.adopt_model(INFO, "fp32")
        root = library.root_id("/photos")
        vectors = unit_vectors(count, seed)
        paths = [f"{prefix}{seed}_{i}.jpg" for i in range(count)]
        labels = [(Label("cat", 0.9), Label("dog", 0.1))] * count
        taken = [1_600_000_000.0 + 86400 * i for i in range(count)]
        entries = image_entries(vectors, root, paths, labels=labels, taken_at=taken)
        return library.write_batch(entries)


class Run:
    """Index folders into the PostgreSQL library with the fake embedder."""

    def __init__(self, home: Path, store: str, embedder: FakeEmbedder) -> None:
        self.home, self.store, self.embedder = home, store, embedder

    def __call__(self, *folders: Path):
        with open_library(self.home, write=True, store=self.store) as library:
            indexer = Indexer(library, lambda: self.embedder, batch_size=4, decode_workers=2)
            return indexer.reconcile(folders)

    def reader(self):
        return open_library(self.home, store=self.store)


@pytest.fixture
def run(home: Path, pg_store: str, fake_embedder: FakeEmbedder) -> Run:
    return Run(home, pg_store, fake_embedder)


def test_write_and_read_back_exactly(home: Path, pg_store: str) -> None:
    ids = fill(home, pg_store, 5)
    with open_library(home, store=pg_store) as library:
        hits = library.hits(ids[::-1], [0.5] * 5)
        assert [hit.id for hit in hits] == ids[::-1]
        assert hits[0].labels == (Label("cat", 0.9), Label("dog", 0.1))
        vector, _labels = library.embedding(ids[0])
        assert vector.tobytes() == unit_vectors(5, 0)[0].tobytes()  # float32, bit for bit
        assert library.counts().vectors == 5 and library.vector_count() == 5
        assert library.model == INFO
    assert not (home / "library.sqlite3").exists()  # the library is the server's


def test_search_matches_brute_force(home: Path, pg_store: str) -> None:
    fill(home, pg_store, 200, seed=1)
    with open_library(home, store=pg_store) as library:
        ids, vectors = next(library.iter_embeddings())
        query = unit_vectors(1, 9)[0]
        found, scores = library.vectors.search(query, 10)
        expected = ids[np.argsort(-(vectors @ query), kind="stable")[:10]]
        assert found.tolist() == expected.tolist()
        assert np.allclose(scores, np.sort(vectors @ query)[::-1][:10], atol=1e-5)


def test_filters_run_in_sql_with_the_vector_order(home: Path, pg_store: str) -> None:
    fill(home, pg_store, 30, seed=2, prefix="/photos/a/p")
    fill(home, pg_store, 30, seed=3, prefix="/photos/ab/p")  # shares the prefix "/photos/a"
    with open_library(home, store=pg_store) as library:
        query = unit_vectors(1, 5)[0]
        under = Filters(under="/photos/a")
        hits = nearest(library, query, 50, under)
        assert len(hits) == 30 and all(h.path.startswith("/photos/a/") for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        dated = Filters(after=1_600_000_000.0 + 86400 * 10, before=1_600_000_000.0 + 86400 * 12)
        assert len(nearest(library, query, 50, dated)) == 4  # days 10 and 11 of both folders
        assert len(library.allowed_ids(under)) == 30


def test_indexer_search_move_and_delete(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "album", 6)
    summary = run(tmp_path / "album")
    assert (summary.new, summary.embedded) == (6, 6)
    with run.reader() as library:
        for photo in photos:
            hits = search_by_image(library, fake_embedder, photo, k=3)
            assert hits[0].path == str(photo)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
        before = {p: r.id for p, r in library.files_under("/").items()}
    (tmp_path / "album" / "sub").mkdir()
    moved = tmp_path / "album" / "sub" / "moved.jpg"
    shutil.move(photos[0], moved)
    photos[1].unlink()
    calls = fake_embedder.calls
    summary = run(tmp_path / "album")
    assert (summary.moved, summary.removed, fake_embedder.calls) == (1, 1, calls)
    with run.reader() as library:
        after = {p: r.id for p, r in library.files_under("/").items()}
        assert after[str(moved)] == before[str(photos[0])]  # same id, same vector
        assert str(photos[1]) not in after
        hits = search_by_image(library, fake_embedder, moved, k=6)
        assert hits[0].path == str(moved) and len(hits) == 5


def test_taught_labels(home: Path, pg_store: str) -> None:
    ids = fill(home, pg_store, 4)
    with open_library(home, write=True, store=pg_store) as library:
        cid = library.save_classifier("pets", b"weights", ["cat", "dog"], 0.9, INFO.fingerprint)
        labels = [Label("pet-cat", 0.8, "custom:pets")] * 2
        library.write_custom_labels(cid, ids[:2], labels)
    with open_library(home, store=pg_store) as library:
        assert library.hits([ids[0]], [1.0])[0].labels[0] == Label("pet-cat", 0.8, "custom:pets")
        found = library.best_with_labels(["pet-cat"], Filters(), 10)
        assert sorted(h.id for h in found) == ids[:2]
        assert ("pet-cat", 2, 2) in library.label_vocabulary()
        assert [c["name"] for c in library.classifier_summaries()] == ["pets"]
    with open_library(home, write=True, store=pg_store) as library:
        assert library.remove_classifier("pets")
        assert library.best_with_labels(["pet-cat"], Filters(), 10) == []


def photos_in(library, count: int, seed: int, labels=None, dim: int = DIM) -> list:
    """``count`` ImageEntry rows at /photos/c<seed>_<i>.jpg, the model's labels by default."""
    root = library.root_id("/photos")
    paths = [f"/photos/c{seed}_{i}.jpg" for i in range(count)]
    labels = labels or [(Label("cat", 0.9), Label("dog", 0.1))] * count
    return image_entries(unit_vectors(count, seed, dim), root, paths, labels=labels)


def vector_bytes(library) -> dict[int, bytes]:
    """id -> its vector's float32 bytes, as read back from the server."""
    found = {}
    for ids, chunk in library.iter_embeddings():
        found.update((int(i), v.tobytes()) for i, v in zip(ids, chunk, strict=True))
    return found


def stored(library) -> dict[str, tuple]:
    """path -> (id, ok, vector bytes or None, labels) for every images row."""
    vectors, rows = vector_bytes(library), library.files_under("/")
    hits = library.hits([r.id for r in rows.values()], [1.0] * len(rows))
    labels = {hit.id: hit.labels for hit in hits}
    return {p: (r.id, r.ok, vectors.get(r.id), labels[r.id]) for p, r in rows.items()}


def test_the_same_batch_written_twice_leaves_one_row_per_photo(home: Path, pg_store: str) -> None:
    with open_library(home, write=True, store=pg_store) as library:
        library.adopt_model(INFO, "fp32")
        batch = photos_in(library, 6, seed=1)
        odd = "/photos/a\tb, c\\d\ne, \u00e9t\u00e9 \\N.jpg"  # what COPY's text form escapes
        batch[0] = dataclasses.replace(batch[0], path=odd)
        ids = library.write_batch(batch)
        once, seq = stored(library), library.max_seq()
        assert library.write_batch(batch) == ids and len(set(ids)) == 6
        assert stored(library) == once  # the same ids, vectors and labels, nothing doubled
        assert library.max_seq() == seq + 6  # a rewrite is a new write for the caches
        counts = library.counts()
        assert (counts.images, counts.vectors) == (6, 6)
        assert library.label_vocabulary() == [("cat", 6, 6), ("dog", 0, 6)]
    for entry, image_id in zip(batch, ids, strict=True):
        labels = (Label("cat", 0.9), Label("dog", 0.1))
        assert once[entry.path] == (image_id, True, entry.vector.tobytes(), labels)  # bit for bit


def test_a_failure_at_a_path_replaces_the_photo_there(home: Path, pg_store: str) -> None:
    with open_library(home, write=True, store=pg_store) as library:
        library.adopt_model(INFO, "fp32")
        ids = library.write_batch(photos_in(library, 3, seed=2))
        error = "truncated\tat byte 5\\n\n"  # COPY's text format escapes tabs, \ and newlines
        broken = FailedEntry("/photos/c2_1.jpg", library.root_id("/photos"), 5, 5, error)
        library.write_batch(photos_in(library, 1, seed=3), [broken])  # with a new photo
        rows = stored(library)
        assert rows["/photos/c2_1.jpg"] == (ids[1], False, None, ())  # the same id, nothing left
        assert rows["/photos/c2_0.jpg"][2] == unit_vectors(3, 2)[0].tobytes()
        counts = library.counts()
        assert (counts.images, counts.failed, counts.vectors) == (3, 1, 3)
        assert library.label_vocabulary() == [("cat", 3, 3), ("dog", 0, 3)]
        assert library.failures() == [("/photos/c2_1.jpg", error)]
        found, _ = library.vectors.search(unit_vectors(3, 2)[1], 4)
        assert len(found) == 3 and ids[1] not in found.tolist()


def test_taught_labels_written_with_a_batch(home: Path, pg_store: str) -> None:
    with open_library(home, write=True, store=pg_store) as library:
        library.adopt_model(INFO, "fp32")
        library.save_classifier("pets", b"weights", ["cat"], 0.9, INFO.fingerprint)
        taught = (Label("pet-cat", 0.8, "custom:pets"), Label("cat", 0.6), Label("dog", 0.2))
        gone = (Label("pet-dog", 0.7, "custom:removed"), Label("cat", 0.5))  # no such classifier
        ids = library.write_batch(photos_in(library, 3, seed=4, labels=[taught, taught, gone]))
        assert [h.labels for h in library.hits(ids, [1.0] * 3)] == [taught, taught, gone[1:]]
        assert sorted(h.id for h in library.best_with_labels(["pet-cat"], Filters(), 10)) == ids[:2]
        assert [h.id for h in library.best_with_labels(["cat"], Filters(), 1)] == [ids[0]]
        relabelled = [(Label("dog", 0.9),)] * 3  # written again: the old labels all go
        library.write_batch(photos_in(library, 3, seed=4, labels=relabelled))
        assert library.best_with_labels(["pet-cat"], Filters(), 10) == []
        assert library.label_vocabulary() == [("dog", 3, 3)]


def test_a_large_batch_round_trips(home: Path, pg_store: str) -> None:
    count, dim = 2000, 768
    with open_library(home, write=True, store=pg_store) as library:
        library.adopt_model(ModelInfo(name="m", fingerprint="f", dim=dim), "fp32")
        photos = photos_in(library, count, seed=5, dim=dim)
        first = library.write_batch(photos[::3])
        earlier = {e.path: i for e, i in zip(photos[::3], first, strict=True)}
        batch = [photos[i] for i in np.random.default_rng(5).permutation(count)]
        ids = library.write_batch(batch)  # old and new photos mixed, in no order
        paths = {r.path: r.id for r in library.files_under("/").values()}
        assert paths == {e.path: i for e, i in zip(batch, ids, strict=True)}
        assert len(paths) == count  # every photo its own id, in the batch's order
        assert {e.path: i for e, i in zip(batch, ids, strict=True) if e.path in earlier} == earlier
        expected = {i: e.vector.tobytes() for e, i in zip(batch, ids, strict=True)}
        assert vector_bytes(library) == expected  # float32, bit for bit
        assert library.max_seq() == len(earlier) + count
        assert library.label_vocabulary() == [("cat", count, count), ("dog", 0, count)]


def test_other_model_refused(home: Path, pg_store: str) -> None:
    fill(home, pg_store, 2)
    with (
        open_library(home, write=True, store=pg_store) as library,
        pytest.raises(ModelMismatchError),
    ):
        library.adopt_model(ModelInfo(name="other", fingerprint="sha256:def", dim=DIM), "fp32")


def test_readers_see_commits_at_once(home: Path, pg_store: str, tmp_path: Path) -> None:
    fill(home, pg_store, 3)
    with open_library(tmp_path / "other-host", store=pg_store) as reader:
        assert reader.counts().images == 3
        new = fill(home, pg_store, 2, seed=7)  # another writer commits meanwhile
        assert reader.counts().images == 5  # no refresh, no cache to catch up
        found, _ = reader.vectors.search(unit_vectors(2, 7)[1], 1)
        assert found.tolist() == [new[1]]


def test_readers_cannot_write(home: Path, pg_store: str) -> None:
    fill(home, pg_store, 2)
    with open_library(home, store=pg_store) as reader, pytest.raises(Exception, match="read-only"):
        reader.set_meta(device="cpu")


HOLD_LOCK = """
import sys, time
from vitsearch.store import open_library
with open_library(sys.argv[1], write=True, store=sys.argv[2]):
    print("holding", flush=True)
    time.sleep(600)
"""


def test_second_writer_refused_with_host_and_pid_until_it_dies(
    home: Path, pg_store: str, tmp_path: Path
) -> None:
    fill(home, pg_store, 2)
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path / "host-b"), pg_store],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "holding"
        with pytest.raises(LibraryLockedError) as refused:
            open_library(home, write=True, store=pg_store)
        assert f"pid {writer.pid} on {socket.gethostname()}" in str(refused.value)
        assert writer_pid(home, pg_store) == writer.pid
        with open_library(home, store=pg_store) as reader:  # readers are never refused
            assert reader.counts().images == 2
        os.kill(writer.pid, signal.SIGKILL)  # a dead writer: the server drops its session
        writer.wait()
        deadline = time.monotonic() + 10
        while writer_pid(home, pg_store) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        with open_library(home, write=True, store=pg_store) as library:
            assert library.counts().images == 2
    finally:
        writer.kill()
        writer.wait()
    assert writer_pid(home, pg_store) is None


def test_duplicates_on_postgres_match_the_embedded_library(tmp_path: Path, pg_store: str) -> None:
    album = draw_album(tmp_path / "album", 5)
    shutil.copy(album[0], tmp_path / "album" / "copy.jpg")
    draw_photo(tmp_path / "album" / "near.jpg", seed=0, size=(97, 72))  # resized twin of 0
    embedder = FakeEmbedder()
    found = []
    for store in (None, pg_store):
        home = tmp_path / f"home-{bool(store)}"
        with open_library(home, write=True, store=store) as library:
            Indexer(library, lambda: embedder, batch_size=4).reconcile([tmp_path / "album"])
        with open_library(home, store=store) as library:
            groups = find_duplicates(library)
            found.append(
                sorted((g.kind, sorted(Path(p.path).name for p in g.members)) for g in groups)
            )
    assert found[0] == found[1] and found[0]


def test_copy_needs_an_empty_destination(home: Path, pg_store: str, tmp_path: Path) -> None:
    fill(tmp_path / "local", None, 2)
    fill(home, pg_store, 2)
    with (
        open_library(tmp_path / "local", write=True) as source,
        open_library(home, write=True, store=pg_store) as dest,
        pytest.raises(LibraryNotEmptyError),
    ):
        copy_library(source, dest)


def photo_like(count: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around themes, like photo embeddings (uniform ones have no neighbours)."""
    rng = np.random.default_rng(seed)
    themes = unit_vectors(max(2, count // 100), seed + 1, dim)
    picked = themes[rng.integers(0, len(themes), count)]
    vectors = picked + rng.standard_normal((count, dim)).astype(np.float32) * (0.5 / dim**0.5)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_hnsw_recall_against_exact_also_at_a_10_percent_folder_filter(
    home: Path, pg_store: str
) -> None:
    count, dim = 3000, 32
    vectors = photo_like(count, dim, seed=3)
    paths = [f"/photos/{'a' if i % 10 == 0 else 'b'}/p{i}.jpg" for i in range(count)]
    with open_library(home, write=True, store=pg_store) as library:
        library.adopt_model(ModelInfo(name="m", fingerprint="f", dim=dim), "fp32")
        root = library.root_id("/photos")
        for start in range(0, count, 500):
            part = slice(start, start + 500)
            library.write_batch(image_entries(vectors[part], root, paths[part]))
    noise = np.random.default_rng(4).standard_normal((40, dim)).astype(np.float32) * 0.05
    queries = vectors[::75][:40] + noise  # near photos of the library, as a search by photo is
    with open_library(home, store=pg_store) as library:
        assert library.estimated_vectors() == count  # (counted, or the server's estimate)
        assert library.vectors.candidates(10) == 64 and library.vectors.candidates(100) == 100
        under = library.allowed_ids(Filters(under="/photos/a"))
        assert len(under) == count // 10
        for allowed in (None, under):
            found = truth = 0
            for query in queries:
                want = set(library.vectors.search(query, 10, allowed, plan="exact")[0].tolist())
                got, _ = library.vectors.search(query, 10, allowed, plan="index")
                assert len(got) == 10  # the iterative scan goes on until the filter is met
                found, truth = found + len(want & set(got.tolist())), truth + 10
            assert found / truth >= 0.95, (allowed is not None, found / truth)


def snapshot(home: Path, store: str | None) -> tuple:
    """Everything a copy must keep: per id its path, labels, vector bytes and details; the
    failed files, the taught classifiers, the model and the last write number."""
    with open_library(home, store=store) as library:
        vectors = {
            int(i): v.tobytes()
            for ids, chunk in library.iter_embeddings()
            for i, v in zip(ids, chunk, strict=True)
        }
        hits = library.hits(sorted(vectors), [1.0] * len(vectors))
        details = library.details(sorted(vectors))
        photos = {hit.id: (hit.path, hit.labels, vectors[hit.id], details[hit.id]) for hit in hits}
        failed = library.failures()
        return photos, failed, library.classifier_summaries(), library.model, library.max_seq()


def test_migrate_both_ways_keeps_ids_vectors_and_labels(
    tmp_path: Path, pg_store: str, cli_env: dict
) -> None:
    local = tmp_path / "local"
    ids = fill(local, None, 12)
    with open_library(local, write=True) as library:
        library.delete([ids[-1]])  # the highest id ever given is not among the rows left
        error = 'cannot identify image file "a\tb\\c"\nline two'  # COPY's text escapes
        library.write_batch(
            [], [FailedEntry("/photos/bad.jpg", library.root_id("/photos"), 5, 5, error)]
        )
        cid = library.save_classifier("pets", b"w", ["cat"], None, INFO.fingerprint)
        library.write_custom_labels(cid, ids[:3], [Label("pet", 0.7, "custom:pets")] * 3)
    before = snapshot(local, None)
    migrate = [sys.executable, "-m", "vitsearch", "migrate", "--home", str(tmp_path / "host")]
    done = subprocess.run(
        [*migrate, "--from", str(local), "--to", pg_store],
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "copied 12 photos (11 vectors" in done.stdout  # the failed file's row too
    assert snapshot(tmp_path / "host", pg_store) == before
    status = subprocess.run(
        [sys.executable, "-m", "vitsearch", "status", "--json", "--store", pg_store],
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(status.stdout)
    assert (shown["images"], shown["failed"], shown["vectors"]) == (11, 1, 11)
    assert shown["writer_pid"] is None
    assert shown["home"].startswith("postgresql://postgres@/vitsearch_test_")  # no password
    back = tmp_path / "back"
    subprocess.run(
        [*migrate, "--from", pg_store, "--to", str(back)],
        env=cli_env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert snapshot(back, None) == before
    with open_library(back) as library:  # the FAISS cache was built and saved by the copy
        assert len(library.vectors) == 11
    for home, store in ((back, None), (tmp_path / "host", pg_store)):
        assert fill(home, store, 1, seed=9)[0] == ids[-1] + 2  # after the failed file: no id twice
    again = subprocess.run(
        [*migrate, "--from", str(local), "--to", pg_store],
        env=cli_env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 1 and "already holds photos" in again.stderr


def test_the_hnsw_graph_is_built_and_rebuilt_with_its_options(home: Path, pg_store: str) -> None:
    from sqlalchemy import create_engine

    from vitsearch.store.postgres import HNSW_EF_CONSTRUCTION, HNSW_INDEX, HNSW_M, pg_url

    def graph_options() -> list[str]:
        engine = create_engine(pg_url(pg_store))
        try:
            with engine.connect() as conn:
                return conn.exec_driver_sql(
                    f"SELECT reloptions FROM pg_class WHERE oid = '{HNSW_INDEX}'::regclass"
                ).scalar()
        finally:
            engine.dispose()

    fill(home, pg_store, 20)
    built = [f"m={HNSW_M}", f"ef_construction={HNSW_EF_CONSTRUCTION}"]
    assert graph_options() == built
    with open_library(home, write=True, store=pg_store) as writer:
        assert writer.rebuild_vectors() == 20
        assert len(writer.vectors.search(unit_vectors(1, 5)[0], 5, plan="index")[0]) == 5
    assert graph_options() == built
