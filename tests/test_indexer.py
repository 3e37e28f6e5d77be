"""The reconcile pipeline on real files, real SQLite and FAISS, with the fake embedder at the model boundary."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import FakeEmbedder, draw_album, draw_photo
from vitsearch.config import available_cores
from vitsearch.errors import ModelMismatchError
from vitsearch.indexer import Indexer
from vitsearch.search.query import nearest, search_by_image, similar_to
from vitsearch.store import open_library


class Run:
    """Index ``folders`` into ``home`` with a fresh library handle, counting model loads."""

    def __init__(self, home: Path, embedder: FakeEmbedder) -> None:
        self.home = home
        self.embedder = embedder
        self.loads = 0

    def __call__(self, *folders: Path, batch_size: int = 4):
        def factory():
            self.loads += 1
            return self.embedder

        with open_library(self.home, write=True) as library:
            indexer = Indexer(library, factory, batch_size=batch_size, decode_workers=2)
            return indexer.reconcile(folders)


@pytest.fixture
def run(home: Path, fake_embedder: FakeEmbedder) -> Run:
    return Run(home, fake_embedder)


def library_ids(home: Path) -> dict[str, int]:
    with open_library(home) as library:
        return {path: row.id for path, row in library.files_under("/").items() if row.ok}


def test_index_then_search_finds_each_photo_first(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "album", 9)
    summary = run(tmp_path / "album")
    assert (summary.new, summary.failed, summary.embedded) == (9, 0, 9)
    with open_library(run.home) as library:
        for photo in photos:
            hits = search_by_image(library, fake_embedder, photo, k=3)
            assert hits[0].path == str(photo)
            assert hits[0].score == pytest.approx(1.0, abs=1e-4)
            assert len(hits[0].labels) == 5


def test_faiss_results_equal_brute_force(run: Run, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 30)
    run(tmp_path / "album")
    with open_library(run.home) as library:
        ids, vectors = next(library.iter_embeddings())
        query = vectors[3] + 0.1 * vectors[7]
        query /= np.linalg.norm(query)
        expected = ids[np.argsort(-(vectors @ query))[:5]]
        assert [hit.id for hit in nearest(library, query, 5)] == expected.tolist()


def test_unchanged_rerun_loads_no_model(run: Run, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 5)
    run(tmp_path / "album")
    summary = run(tmp_path / "album")
    assert summary.unchanged == 5 and summary.embedded == 0
    assert run.loads == 1
    assert summary.line().startswith("nothing changed: 5 photos up to date")


def test_a_folder_without_photos_says_so(run: Run, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a photo")
    summary = run(tmp_path / "empty")
    assert summary.line().startswith("no photos found") and run.loads == 0


def test_rename_and_move_keep_id_without_model_call(
    run: Run, tmp_path: Path, fake_embedder
) -> None:
    photos = draw_album(tmp_path / "album", 4)
    run(tmp_path / "album")
    before = library_ids(run.home)
    embedded = fake_embedder.images_embedded
    renamed = photos[0].with_name("renamed.jpg")
    photos[0].rename(renamed)
    moved = tmp_path / "album" / "sub" / photos[1].name
    moved.parent.mkdir()
    photos[1].rename(moved)

    summary = run(tmp_path / "album")
    after = library_ids(run.home)
    assert summary.moved == 2 and summary.new == 0 and summary.removed == 0
    assert fake_embedder.images_embedded == embedded
    assert after[str(renamed)] == before[str(photos[0])]
    assert after[str(moved)] == before[str(photos[1])]
    assert len(after) == 4


def test_same_size_different_bytes_is_not_a_move(run: Run, tmp_path: Path, fake_embedder) -> None:
    photo = draw_photo(tmp_path / "album" / "a.png", seed=1, fmt="PNG")
    run(tmp_path / "album")
    data = bytearray(photo.read_bytes())
    photo.unlink()
    other = draw_photo(tmp_path / "album" / "b.png", seed=2, fmt="PNG")
    other.write_bytes(bytes(data[:-1]) + bytes([data[-1] ^ 1]))  # same size, new content
    summary = run(tmp_path / "album")
    assert summary.moved == 0 and summary.removed == 1
    assert summary.new + summary.failed == 1


def test_deleted_photo_leaves_search(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "album", 5)
    run(tmp_path / "album")
    photos[2].unlink()
    summary = run(tmp_path / "album")
    assert summary.removed == 1
    with open_library(run.home) as library:
        hits = search_by_image(library, fake_embedder, photos[3], k=10)
        assert str(photos[2]) not in {hit.path for hit in hits}
        assert len(hits) == 4 == len(library.vectors)


def test_changed_file_is_reembedded_in_place(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "album", 3)
    run(tmp_path / "album")
    before = library_ids(run.home)
    draw_photo(photos[0], seed=99, size=(120, 90))
    os.utime(photos[0], ns=(1, 2_000_000_000))
    summary = run(tmp_path / "album")
    assert (summary.updated, summary.new) == (1, 0)
    assert library_ids(run.home) == before
    with open_library(run.home) as library:
        assert search_by_image(library, fake_embedder, photos[0], k=1)[0].path == str(photos[0])


def test_copy_reuses_embedding_without_model(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "album", 2)
    run(tmp_path / "album")
    embedded = fake_embedder.images_embedded
    shutil.copy(photos[0], tmp_path / "album" / "copy.jpg")
    summary = run(tmp_path / "album")
    assert (summary.new, summary.reused) == (1, 1)
    assert fake_embedder.images_embedded == embedded
    assert len(library_ids(run.home)) == 3


def test_corrupt_file_recorded_skipped_and_retried_only_when_changed(
    run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    draw_album(tmp_path / "album", 6)
    bad = tmp_path / "album" / "broken.jpg"
    bad.write_text("this is not a jpeg")
    summary = run(tmp_path / "album", batch_size=3)
    assert (summary.new, summary.failed) == (6, 1)
    assert f"skipping {bad}: not an image" in caplog.text
    with open_library(run.home) as library:
        counts = library.counts()
        assert (counts.images, counts.failed, counts.vectors) == (6, 1, 6)
        assert library.failures()[0][0] == str(bad)
    assert run(tmp_path / "album").failed == 0
    draw_photo(bad, seed=5, fmt="JPEG")
    fixed = run(tmp_path / "album")
    assert fixed.updated == 1
    with open_library(run.home) as library:
        assert library.counts().failed == 0


def test_missing_root_goes_offline_and_comes_back(run: Run, tmp_path: Path, fake_embedder) -> None:
    photos = draw_album(tmp_path / "drive" / "photos", 3)
    run(tmp_path / "drive" / "photos")
    shutil.move(tmp_path / "drive", tmp_path / "unplugged")
    summary = run(tmp_path / "drive" / "photos")
    assert summary.removed == 0 and summary.offline == (str(tmp_path / "drive" / "photos"),)
    with open_library(run.home) as library:
        hits = search_by_image(
            library,
            fake_embedder,
            photos[0].parent.parent.parent / "unplugged" / "photos" / photos[0].name,
            k=3,
        )
        assert len(hits) == 3 and not any(hit.online for hit in hits)
    shutil.move(tmp_path / "unplugged", tmp_path / "drive")
    back = run(tmp_path / "drive" / "photos")
    assert back.unchanged == 3 and back.removed == 0
    with open_library(run.home) as library:
        assert all(hit.online for hit in similar_to(library, photos[0], 5))


def test_empty_mount_point_keeps_photos(run: Run, tmp_path: Path) -> None:
    photos = draw_album(tmp_path / "mnt", 2)
    run(tmp_path / "mnt")
    for photo in photos:
        photo.unlink()
    summary = run(tmp_path / "mnt")
    assert summary.removed == 0 and summary.offline
    assert len(library_ids(run.home)) == 2


def test_similar_excludes_itself(run: Run, tmp_path: Path) -> None:
    photos = draw_album(tmp_path / "album", 6)
    run(tmp_path / "album")
    with open_library(run.home) as library:
        hits = similar_to(library, photos[0], k=3)
    assert len(hits) == 3 and str(photos[0]) not in {hit.path for hit in hits}
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)


def test_other_model_refused(run: Run, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 2)
    run(tmp_path / "album")
    draw_photo(tmp_path / "album" / "new.jpg", seed=50)
    other = Run(run.home, FakeEmbedder(seed=8, name="other"))
    with pytest.raises(ModelMismatchError, match="built with model fake-vit"):
        other(tmp_path / "album")
    assert len(library_ids(run.home)) == 2


def test_hidden_and_non_images_ignored(run: Run, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 2)
    draw_photo(tmp_path / "album" / ".hidden.jpg", seed=3)
    draw_photo(tmp_path / "album" / ".thumbs" / "t.jpg", seed=4)
    (tmp_path / "album" / "notes.txt").write_text("hello")
    assert run(tmp_path / "album").new == 2


class TimedEmbedder(FakeEmbedder):
    """The fake model, noting when pixels are made (decode threads) and when it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.preprocessed: list[tuple[float, float]] = []
        self.forwards: list[tuple[float, float]] = []
        self._lock = threading.Lock()

    def preprocess(self, image):
        started = time.perf_counter()
        time.sleep(0.002)  # long enough for an overlap to show
        pixels = super().preprocess(image)
        with self._lock:
            self.preprocessed.append((started, time.perf_counter()))
        return pixels

    def embed(self, pixels):
        started = time.perf_counter()
        time.sleep(0.02)
        result = super().embed(pixels)
        self.forwards.append((started, time.perf_counter()))
        return result


@pytest.mark.parametrize("alongside", [False, True])
def test_decoding_waits_for_the_forward_when_the_model_uses_every_core(
    alongside: bool, home: Path, tmp_path: Path
) -> None:
    draw_album(tmp_path / "album", 24)
    embedder = TimedEmbedder()
    # the model's threads take every core, or leave one free (needs 2 cores to mean it)
    threads = available_cores() - 1 if alongside else available_cores()
    if alongside and threads < 1:
        pytest.skip("one core: the model cannot leave one free")
    with open_library(home, write=True) as library:
        indexer = Indexer(
            library, lambda: embedder, batch_size=4, decode_workers=2, model_threads=threads
        )
        assert indexer.reconcile([tmp_path / "album"]).embedded == 24
    overlaps = sum(
        start < end_f and start_f < end
        for start, end in embedder.preprocessed
        for start_f, end_f in embedder.forwards
    )
    if alongside:
        assert overlaps > 0, "with a core free, decoding should run during the forwards"
    else:
        assert overlaps == 0, "decoding ran while the model was using every core"
