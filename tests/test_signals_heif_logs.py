"""SIGTERM during `index`, HEIC photos (and the warning when no plugin reads them), and `-v`
logging that shows our lines without third-party floods."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import FakeEmbedder, draw_album, draw_photo, once, vitsearch
from vitsearch.config import load_settings
from vitsearch.indexer import Indexer
from vitsearch.photos.files import PLUGIN_EXTENSIONS
from vitsearch.search.query import search_by_image
from vitsearch.store import open_library

PINNED = {"VITSEARCH_BACKEND": "torch", "VITSEARCH_PRECISION": "fp32"}


def reconcile(home: Path, embedder, *folders: Path, batch_size: int = 2):
    with open_library(home, write=True) as library:
        indexer = Indexer(library, lambda: embedder, batch_size=batch_size, decode_workers=1)
        return indexer.reconcile(folders)


class StopDuringFirstForward(FakeEmbedder):
    """The model boundary, with a stop request arriving while it runs its first batch (as a
    signal handler would set it mid-forward)."""

    indexer: Indexer

    def embed(self, pixels: np.ndarray):
        self.indexer.stop.set()
        return super().embed(pixels)


def test_stop_commits_the_batch_in_hand_then_next_run_finishes(home: Path, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 10)
    embedder = StopDuringFirstForward()
    with open_library(home, write=True) as library:
        indexer = Indexer(library, lambda: embedder, batch_size=2, decode_workers=1)
        embedder.indexer = indexer
        first = indexer.reconcile([tmp_path / "album"])
    assert first.interrupted and first.new == 2 and "run again to finish" in first.line()
    with open_library(home) as library:
        committed = set(library.embedding_ids().tolist())
    assert len(committed) == 2 and faiss_ids(home) == committed  # FAISS written as it stopped

    second = reconcile(home, FakeEmbedder(), tmp_path / "album")
    assert not second.interrupted and (second.new, second.updated, second.unchanged) == (8, 0, 2)


def test_stop_before_the_walk_touches_nothing(home: Path, tmp_path: Path) -> None:
    draw_album(tmp_path / "album", 3)
    with open_library(home, write=True) as library:
        indexer = Indexer(library, FakeEmbedder, batch_size=2)
        indexer.stop.set()  # e.g. SIGTERM while the model was loading
        summary = indexer.reconcile([tmp_path / "album"])
    assert summary.interrupted and summary.new == 0


def committed_rows(database: Path) -> int:
    """Photos committed so far, read without taking any lock the indexer needs."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            return connection.execute("SELECT count(*) FROM images").fetchone()[0]
    except sqlite3.Error:  # not created yet
        return 0


def faiss_ids(home: Path) -> set[int]:
    import faiss

    index = faiss.read_index(str(home / "vectors.faiss"))
    return set(faiss.vector_to_array(index.id_map).tolist())


@pytest.mark.slow
def test_sigterm_during_index_commits_and_exits_zero(
    cli_env: dict, home: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    total = len(draw_album(folder, 400))
    env = {**cli_env, **PINNED, "VITSEARCH_BATCH_SIZE": "2"}
    database = home / "library.sqlite3"
    process = subprocess.Popen(
        [sys.executable, "-m", "vitsearch", "index", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while committed_rows(database) == 0 and process.poll() is None:
            assert time.monotonic() < deadline, "no batch was committed"
            time.sleep(0.005)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 0, err
    summary = out.strip().splitlines()[-1]
    assert "new" in summary and "run again to finish" in summary, out
    info = json.loads(vitsearch("status", "--json", env=env).stdout)
    first = info["images"]
    assert 0 < first < total, "the run finished before SIGTERM; the test proved nothing"
    assert info["vectors"] == first and info["writer_pid"] is None
    with open_library(home) as library:
        ids_before = {path: row.id for path, row in library.files_under("/").items()}
        assert faiss_ids(home) == set(library.embedding_ids().tolist())
    assert f"{first} new" in summary

    second = vitsearch("index", str(folder), env=env)
    assert second.stdout.strip().startswith(f"{total - first} new, 0 updated"), second.stdout
    info = once(load_settings({}, home=home)).status().as_dict()  # what `status --json` prints
    assert info["images"] == info["vectors"] == total
    with open_library(home) as library:
        ids_after = {path: row.id for path, row in library.files_under("/").items()}
        assert faiss_ids(home) == set(library.embedding_ids().tolist())
    assert {path: ids_after[path] for path in ids_before} == ids_before  # none indexed twice


def write_heic(path: Path, seed: int) -> Path:
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif is not installed")
    pillow_heif.register_heif_opener()
    if not pillow_heif.libheif_info().get("HEIF"):
        pytest.skip("this platform's libheif has no HEIC encoder to write a test photo")
    picture = draw_photo(path.with_suffix(".png"), seed=seed)
    with Image.open(picture) as image:
        image.save(path, format="HEIF", quality=90)
    picture.unlink()
    return path


def test_heic_photo_is_indexed_and_found(home: Path, tmp_path: Path) -> None:
    photo = write_heic(tmp_path / "album" / "IMG_0001.HEIC", seed=3)
    draw_album(tmp_path / "album", 3, start_seed=10)
    embedder = FakeEmbedder()
    summary = reconcile(home, embedder, tmp_path / "album")
    assert (summary.new, summary.failed) == (4, 0)
    with open_library(home) as library:
        row = library.file_at(str(photo))
        assert row is not None and row.ok
        hits = search_by_image(library, embedder, photo, k=1)
    assert hits[0].path == str(photo) and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_heic_without_a_plugin_is_named_once_with_the_fix(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    registered = Image.registered_extensions()
    without = {ext: fmt for ext, fmt in registered.items() if ext not in PLUGIN_EXTENSIONS}
    monkeypatch.setattr(Image, "registered_extensions", lambda: without)  # no HEIC plugin
    folder = tmp_path / "iphone"
    heics = [folder / f"IMG_{i:04d}.HEIC" for i in range(5)]
    for path in heics:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"ftypheic")  # never read: the name alone is skipped
    draw_photo(folder / "screenshot.png", seed=1, fmt="PNG")
    caplog.set_level(logging.WARNING, logger="vitsearch")

    summary = reconcile(home, FakeEmbedder(), folder)
    reconcile(home, FakeEmbedder(), folder)  # a second walk (watch rescans) does not repeat it

    assert summary.new == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("skipping 5 photos that no installed decoder reads")
    assert all(str(path) in warnings[0] for path in heics[:3]) and str(heics[3]) not in warnings[0]
    assert "and 2 more" in warnings[0] and "pip install pillow-heif" in warnings[0]


@pytest.mark.slow
def test_verbose_shows_our_lines_not_pils_and_debug_shows_all(
    cli_env: dict, tmp_path: Path
) -> None:
    draw_photo(tmp_path / "scans" / "page.tif", seed=4, fmt="TIFF")
    env = {**cli_env, **PINNED}

    verbose = vitsearch("index", str(tmp_path / "scans"), "-v", env=env).stderr
    assert " INFO vitsearch.indexer.reconcile: committed 1 photo" in verbose
    assert " DEBUG PIL" not in verbose and " PIL." not in verbose

    debug_env = {**env, "VITSEARCH_HOME": str(tmp_path / "debug-home")}
    debug = vitsearch("index", str(tmp_path / "scans"), "--debug", env=debug_env).stderr
    assert " DEBUG PIL.TiffImagePlugin: " in debug
    assert " INFO vitsearch.indexer.reconcile: committed 1 photo" in debug
