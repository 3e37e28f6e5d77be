"""Above FLAT_LIMIT the FAISS cache becomes an inverted file; everything keeps working."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vitsearch.store.vectors as vectors_module
from tests.helpers import plant, sphere_groups
from vitsearch.explore.duplicates import find_duplicates
from vitsearch.records import Filters
from vitsearch.search.query import nearest
from vitsearch.store import open_library

LIMIT = 400


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library of a few thousand photos stands in for one of a million."""
    monkeypatch.setattr(vectors_module, "FLAT_LIMIT", LIMIT)


def photo_like(count: int, seed: int = 0) -> np.ndarray:
    vectors, _ = sphere_groups([count // 40] * 40, dim=32, spread=0.6, seed=seed)
    return vectors


def exact_top(home: Path, query: np.ndarray, k: int) -> list[int]:
    with open_library(home) as library:
        ids, vectors = next(library.iter_embeddings(chunk=10**6))
    return ids[np.argsort(-(vectors @ query))[:k]].tolist()


def test_library_past_the_limit_gets_an_inverted_file(home: Path, small_limit) -> None:
    plant(home, photo_like(2000))
    with open_library(home) as library:
        index = library.vectors
        assert index.kind == "ivf" and len(index) == 2000
        assert sorted(index.ids().tolist()) == sorted(library.embedding_ids().tolist())


def test_inverted_file_recall(home: Path, small_limit) -> None:
    vectors = photo_like(2000)
    plant(home, vectors)
    rng = np.random.default_rng(5)
    recalls = []
    with open_library(home) as library:
        for i in rng.choice(len(vectors), 30, replace=False):
            query = vectors[i] + 0.05 * rng.standard_normal(vectors.shape[1]).astype(np.float32)
            query /= np.linalg.norm(query)
            found = [h.id for h in nearest(library, query, 10)]
            recalls.append(len(set(found) & set(exact_top(home, query, 10))) / 10)
    assert np.mean(recalls) >= 0.95


def test_filters_still_return_k_on_an_inverted_file(home: Path, small_limit) -> None:
    vectors = photo_like(2000, seed=1)
    paths = [f"/photos/{'rare' if i % 97 == 0 else 'common'}/p{i}.jpg" for i in range(2000)]
    plant(home, vectors, paths=paths)
    with open_library(home) as library:
        assert library.vectors.kind == "ivf"
        hits = nearest(library, vectors[5], 15, Filters(under="/photos/rare"))
    assert len(hits) == 15 and all("/rare/" in h.path for h in hits)


def test_growth_past_the_limit_rebuilds_on_save_and_catch_up_works(home: Path, small_limit) -> None:
    plant(home, photo_like(200, seed=2))
    with open_library(home) as library:
        assert library.vectors.kind == "flat"
    plant(home, photo_like(800, seed=3), folder="/more")
    with open_library(home) as library:
        assert library.vectors.kind == "ivf" and len(library.vectors) == 1000
    with open_library(home, write=True) as library:  # delete some, the saved file follows
        gone = library.embedding_ids()[:10].tolist()
        library.delete(gone)
    with open_library(home) as library:
        assert library.vectors.kind == "ivf"
        assert not set(gone) & set(library.vectors.ids().tolist()) and len(library.vectors) == 990


def test_duplicates_on_an_inverted_file(home: Path, small_limit) -> None:
    vectors = photo_like(1200, seed=4)
    rng = np.random.default_rng(6)
    copies = vectors[:20] + 0.01 * rng.standard_normal((20, vectors.shape[1])).astype(np.float32)
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    ids = plant(home, np.vstack([vectors, copies]))
    with open_library(home) as library:
        groups = find_duplicates(library, ("near",), threshold=0.99)
    found = {frozenset(m.id for m in g.members) for g in groups}
    assert {frozenset({ids[i], ids[1200 + i]}) for i in range(20)} <= found
