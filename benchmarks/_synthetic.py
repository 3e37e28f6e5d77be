"""One synthetic library: clustered unit vectors (themes -> scenes -> shots) shaped like photo
embeddings, written through the store as the indexer writes them; bench_explore.py's two
folders and its queries (library photos moved a little)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitsearch.records import ImageEntry, ModelInfo
from vitsearch.store import Library, open_library

SEED = 20240601
THEME_NOISE = 0.55  # scene = theme centre + this much noise (norm), normalised
SHOT_NOISE = 0.45  # photo = scene + this much noise, normalised
YEARS = 10  # a scene's day is drawn from this many years
START = 1_420_070_400.0  # 2015-01-01 UTC
WRITE_CHUNK = 5000
QUERY_NOISE = 0.35  # a query is a library photo moved this much (cosine ~0.94)
FOLDER_A_SHARE = 0.1
FOLDER_A, FOLDER_B = "/photos/a", "/photos/b"
ROOTS = (FOLDER_A, FOLDER_B)


@dataclass(frozen=True)
class Shape:
    """How a synthetic library clusters: themes (n / ``photos_per_theme``, clipped), each
    with scenes (an event, a burst: one day) of ``scene_size`` shots on average."""

    scene_size: int = 4
    photos_per_theme: int = 300
    fewest_themes: int = 50
    most_themes: int = 5000


@dataclass
class Synthetic:
    vectors: np.ndarray  # (n, dim) float32 unit rows, in the order the photos were taken
    theme: np.ndarray  # (n,) the theme each photo was drawn around
    taken_at: np.ndarray  # (n,) ascending; a scene's shots on one day
    centre_cos: float  # mean cosine of a photo to its theme centre


@dataclass
class Explored(Synthetic):
    """The synthetic library with what this benchmark adds: two folders, planted duplicates."""

    in_a: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # row is in FOLDER_A
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), np.int64))  # (m, 2) rows
    top1_cos: float = 0.0
    top10_cos: float = 0.0


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)  # no copy of a float32 matrix: one result, no more
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noise(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """Gaussian noise of norm ~``size`` per row."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(size / np.sqrt(shape[1]))


def synthesize(
    n: int, dim: int, seed: int = SEED, shape: Shape = Shape(), chunk: int = 10_000
) -> Synthetic:
    """Themes -> scenes -> photos on the unit sphere; scenes and photos generated in chunks
    (the same draws as all at once: the generator's stream is only cut), so little beyond the
    (n, dim) result is held, in the order the photos were taken."""
    rng = np.random.default_rng(seed)
    count = int(np.clip(n // shape.photos_per_theme, shape.fewest_themes, shape.most_themes))
    themes = unit(rng.standard_normal((count, dim), dtype=np.float32))
    scene_theme = rng.integers(0, len(themes), max(1, n // shape.scene_size))
    scene_day = rng.integers(0, YEARS * 365, len(scene_theme))
    scenes = np.empty((len(scene_theme), dim), dtype=np.float32)
    for start in range(0, len(scenes), chunk):
        part = scene_theme[start : start + chunk]
        scenes[start : start + len(part)] = unit(
            themes[part] + noise(rng, (len(part), dim), THEME_NOISE)
        )
    photo_scene = rng.integers(0, len(scenes), n)
    taken_at = START + scene_day[photo_scene] * 86400.0 + (8 + 12 * rng.random(n)) * 3600
    order = np.argsort(taken_at, kind="stable")
    photo_scene, taken_at = photo_scene[order], taken_at[order]
    theme = scene_theme[photo_scene]
    vectors = np.empty((n, dim), dtype=np.float32)
    centre_cos = 0.0
    for start in range(0, n, chunk):
        part = photo_scene[start : start + chunk]
        shots = unit(scenes[part] + noise(rng, (len(part), dim), SHOT_NOISE))
        vectors[start : start + len(part)] = shots
        centre_cos += float(np.einsum("ij,ij->", shots, themes[theme[start : start + len(part)]]))
    return Synthetic(vectors, theme, taken_at, centre_cos / max(n, 1))


def explored(n: int, dim: int) -> Explored:
    """The library's vectors, ~10% of its photos under FOLDER_A and the rest under FOLDER_B."""
    data = Explored(**vars(synthesize(n, dim, SEED + n)))
    data.in_a = np.random.default_rng(SEED + 4).random(n) < FOLDER_A_SHARE
    return data


def make_queries(vectors_of: Callable[[np.ndarray], np.ndarray], rows: int, count: int):
    """``count`` library photos (of the first ``rows``, their vectors from ``vectors_of``),
    each moved by QUERY_NOISE."""
    rng = np.random.default_rng(SEED + 3)
    picked = rng.choice(rows, count, replace=count > rows)
    base = vectors_of(picked)
    return unit(base + noise(rng, base.shape, QUERY_NOISE))


def flat_rows(
    data: Synthetic, roots: Sequence[str], root_of: np.ndarray | None = None
) -> Callable[[range, list[int]], list[ImageEntry]]:
    """Rows for :func:`write_library`: photo i as ``<root>/img_<i>.jpg`` (no file behind it),
    without labels; ``root_of[i]`` is its root's place in ``roots`` (default: the first)."""

    def rows(chunk: range, root_ids: list[int]) -> list[ImageEntry]:
        places = np.zeros(len(chunk), np.int64) if root_of is None else root_of[chunk]
        return [
            ImageEntry(
                path=f"{roots[r]}/img_{i:07d}.jpg",
                root_id=root_ids[r],
                size=2_000_000 + i,
                mtime_ns=i,
                fingerprint=f"fp{i}",
                content_hash=f"hash{i}",
                width=4000,
                height=3000,
                taken_at=float(data.taken_at[i]),
                vector=data.vectors[i],
                labels=(),
            )
            for i, r in zip(chunk, places.tolist(), strict=True)
        ]

    return rows


def write_library(
    home: Path,
    dim: int,
    count: int,
    roots: Sequence[str],
    rows: Callable[[range, list[int]], list[ImageEntry]],
    budget: float = 0.0,
) -> tuple[np.ndarray, float, float]:
    """(ids, write s, build s): :func:`write_rows`, then :func:`build_vectors`."""
    ids, write_s = write_rows(home, dim, count, roots, rows, budget)
    return ids, write_s, build_vectors(home)


def write_rows(
    home: Path,
    dim: int,
    count: int,
    roots: Sequence[str],
    rows: Callable[[range, list[int]], list[ImageEntry]],
    budget: float = 0.0,
    store: str | None = None,
    ready: Callable[[Library], None] | None = None,
) -> tuple[np.ndarray, float]:
    """(ids, seconds): ``count`` rows made by ``rows(chunk, root_ids)`` (the ids of ``roots``),
    written through one writer as ``vitsearch index`` writes them (``write_batch`` in chunks),
    leaving the FAISS cache to :func:`build_vectors`. Beyond ``budget`` seconds of writes
    (0: no cap) the library stops short of ``count``. ``store``: a ``postgresql://`` library
    instead of the home's SQLite; ``ready(library)`` runs once the model is adopted, before
    the first row (untimed)."""
    ids: list[int] = []
    library = open_library(home, write=True, store=store)
    try:
        library.adopt_model(ModelInfo("synthetic", f"synthetic:{dim}", dim), "fp32")
        root_ids = [library.root_id(root) for root in roots]
        if ready is not None:
            ready(library)
        started = time.perf_counter()
        for start in range(0, count, WRITE_CHUNK):
            chunk = range(start, min(count, start + WRITE_CHUNK))
            ids += library.write_batch(rows(chunk, root_ids), [], update_vectors=False)
            elapsed = time.perf_counter() - started
            if chunk.stop * 10 // count > start * 10 // count:  # every tenth
                print(f"  wrote {chunk.stop:,}/{count:,} rows ({chunk.stop / elapsed:,.0f} rows/s)")
            projected = elapsed * (len(ids) + WRITE_CHUNK) / len(ids)  # after the next chunk
            if budget and len(ids) < count and projected > budget:
                print(
                    f"  write budget reached: {len(ids):,} of {count:,} rows in {elapsed:.0f} s "
                    f"({len(ids) / elapsed:,.0f} rows/s; all {count:,} would take "
                    f"~{count / len(ids) * elapsed / 60:.0f} min); the library stops here"
                )
                break
        write_s = time.perf_counter() - started
    finally:
        library.close()  # no FAISS index was loaded, so none is saved
    return np.array(ids, dtype=np.int64), write_s


def build_vectors(home: Path) -> float:
    """Seconds to build the FAISS index from SQLite, as a first open after the writes would,
    and save it (on the writer's close)."""
    started = time.perf_counter()
    library = open_library(home, write=True)
    try:
        library.vectors  # noqa: B018  builds the index from SQLite
    finally:
        library.close()  # saves the FAISS file
    return time.perf_counter() - started
