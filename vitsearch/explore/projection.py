"""The library map: every photo's embedding projected to 2-D, stored for instant reuse.

This module fits and keeps the projection; :mod:`vitsearch.explore.map_view` draws it.

A projection is fitted on a seeded sample of at most ``sample_size`` photos and then applied to
every photo in chunks, so a million photos never need to fit in memory at once. The fitted
projection is kept (PCA's mean and axes in the stored state, UMAP's model beside it in the
home's derived cache), so photos indexed later are placed by transforming them alone, and the points
already on the map never move until a refit.

``method="auto"`` picks UMAP (extra ``vitsearch[map]``) when it is installed and the library has
at least ``AUTO_UMAP_MIN_POINTS`` photos, else PCA, which is a few lines of numpy.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec

import numpy as np

from vitsearch.errors import ConfigError, VitsearchError
from vitsearch.store import Library

log = logging.getLogger(__name__)

SEED = 1234
DEFAULT_SAMPLE_SIZE = 20_000
METHODS = ("auto", "umap", "pca")
UMAP_MIN_POINTS = 4  # UMAP's spectral layout cannot fit fewer
# Below this a 15-neighbour graph joins nearly every photo to every other; PCA is as good a
# picture there, and stable.
AUTO_UMAP_MIN_POINTS = 50
TRANSFORM_CHUNK = 2048  # bounds UMAP's (chunk x sample) distance matrix for small samples
WRITE_CHUNK = 50_000
UMAP_BLOB = "map-umap"
UMAP_SMALL_DATA = 4096  # umap-learn finds neighbours exactly below this, by NN-descent above
INSTALL_HINT = 'pip install "vitsearch[map]"'

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class MapPoints:
    """Every photo on the map, by image id (ascending)."""

    ids: np.ndarray  # (n,) int64
    xy: np.ndarray  # (n, 2) float32
    method: str

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Pca:
    """A 2-D principal-component projection: ``(vectors - mean) @ components.T``."""

    mean: np.ndarray  # (dim,)
    components: np.ndarray  # (2, dim)

    def transform(self, vectors: np.ndarray) -> np.ndarray:
        return ((np.asarray(vectors, np.float64) - self.mean) @ self.components.T).astype(
            np.float32
        )


def project(
    library: Library,
    method: str = "auto",
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    refit: bool = False,
) -> MapPoints:
    """Every indexed photo's position on the library map, computing only what is missing.

    Args:
        library: An open library; reading is enough, the map is derived data.
        method: ``"umap"``, ``"pca"`` or ``"auto"`` (UMAP when installed and the library has
            at least ``AUTO_UMAP_MIN_POINTS`` photos, else PCA). A stored map made with
            another method is refitted, so "auto" moves to UMAP once a library grows past
            that size.
        sample_size: At most this many photos (a seeded sample) are used to fit; the rest are
            transformed. Only used when fitting.
        refit: Fit a new projection even if a stored one fits the request.

    Returns:
        The points of every photo, by ascending id.

    Raises:
        ConfigError: Unknown method or bad sample size, or ``"umap"`` without umap-learn.
        VitsearchError: Fewer than 2 indexed photos, or too few for UMAP.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown map method {method!r}; use one of {', '.join(METHODS)}")
    if sample_size < 2:
        raise ConfigError(f"the map sample size must be at least 2, not {sample_size}")
    count = library.embedding_count()
    if count < 2:
        raise VitsearchError(
            f"the library map needs at least 2 indexed photos, this library has {count}; "
            "index a folder first (vitsearch index PATH)"
        )
    chosen = _resolve_method(method, min(count, sample_size))
    transform = None if refit else _stored_transform(library, chosen)
    if transform is None:
        _fit(library, chosen, sample_size)
    else:
        _place_unmapped(library, transform)
    return _stored_points(library)


def umap_pending(library: Library, method: str = "auto", refit: bool = False) -> bool:
    """Whether :func:`project` would run UMAP now (a fit, or placing new photos): the step
    that waits for numba to compile UMAP's code the first time in a process."""
    count = library.embedding_count()
    if count < 2 or _resolve_method(method, min(count, DEFAULT_SAMPLE_SIZE)) != "umap":
        return False
    if refit or _stored_transform(library, "umap") is None:
        return True
    return len(library.unmapped_ids()) > 0


def preview_pca(library: Library, sample_size: int = DEFAULT_SAMPLE_SIZE) -> MapPoints:
    """A PCA map of every photo, computed now and stored nowhere: something to show while
    UMAP warms up that leaves the stored map as it is."""
    sample_ids, sample, everything = _sample(library, sample_size)
    parts = [(sample_ids, sample)] if everything else library.iter_embeddings(chunk=TRANSFORM_CHUNK)
    ids, xy = _transform_all(parts, fit_pca(sample).transform)
    return MapPoints(ids, xy, "pca")


def warm_umap(count: int, dim: int) -> bool:
    """Compile UMAP's numba code, fit and transform, on seeded random vectors shaped like a
    library of ``count`` photos of ``dim`` dimensions, so its first UMAP map in this process
    does not wait for the compiler (10 s to 2 min on 2 cores; more above 4096 photos, where
    umap-learn switches to NN-descent).

    Returns:
        Whether anything was done: False when the library's map would not be UMAP.
    """
    fit_count = min(count, DEFAULT_SAMPLE_SIZE)
    if dim < 1 or fit_count < 2 or _resolve_method("auto", fit_count) != "umap":
        return False
    size = UMAP_SMALL_DATA if fit_count >= UMAP_SMALL_DATA else AUTO_UMAP_MIN_POINTS
    vectors = np.random.default_rng(SEED).standard_normal((size, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    started = time.perf_counter()
    _fit_umap(vectors).transform(vectors[:8])
    log.info("UMAP warmed up in %.1fs", time.perf_counter() - started)
    return True


def fit_pca(sample: np.ndarray) -> Pca:
    """PCA to 2-D by SVD of the centred sample, each axis' sign fixed so refits agree."""
    data = np.asarray(sample, np.float64)
    mean = data.mean(axis=0)
    _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
    components = np.zeros((2, data.shape[1]))
    components[: min(2, len(vt))] = vt[:2]
    # SVD leaves each axis' sign arbitrary: make its largest entry positive.
    pivots = components[np.arange(2), np.abs(components).argmax(axis=1)]
    return Pca(mean, components * np.where(pivots < 0, -1.0, 1.0)[:, None])


# -- fitting and transforming -------------------------------------------------------------


def _resolve_method(method: str, fit_count: int) -> str:
    if method == "pca":
        return "pca"
    if method == "auto":
        usable = find_spec("umap") is not None and fit_count >= AUTO_UMAP_MIN_POINTS
        return "umap" if usable else "pca"
    _import_umap()
    if fit_count < UMAP_MIN_POINTS:
        raise VitsearchError(
            f"a UMAP map needs at least {UMAP_MIN_POINTS} photos to fit on, "
            f"there are {fit_count}; use method 'pca'"
        )
    return "umap"


def _fit(library: Library, method: str, sample_size: int) -> None:
    started = time.perf_counter()
    sample_ids, sample, everything = _sample(library, sample_size)
    known = None
    if method == "pca":
        pca = fit_pca(sample)
        transform: Transform = pca.transform
        extra = {"mean": pca.mean.tolist(), "components": pca.components.tolist()}
        library.derived.drop_blob(UMAP_BLOB)  # a former UMAP fit is now stale
    else:
        model = _fit_umap(sample)
        transform = model.transform
        known = (sample_ids, np.asarray(model.embedding_, np.float32))  # the fit's own layout
        extra = {"model_sha256": _save_umap(library, model)}
    parts = [(sample_ids, sample)] if everything else library.iter_embeddings(chunk=TRANSFORM_CHUNK)
    ids, xy = _transform_all(parts, transform, known)
    state = {
        "method": method,
        "count": len(ids),
        "seed": SEED,
        "sample_size": sample_size,
        "fitted_on": len(sample_ids),
        "dim": int(sample.shape[1]),
        "computed_at": time.time(),
        "seconds": round(time.perf_counter() - started, 3),
        **extra,
    }
    _write(library, ids, xy, state)
    log.info("mapped %d photos with %s in %.1fs", len(ids), method, state["seconds"])


def _place_unmapped(library: Library, transform: Transform) -> None:
    missing = library.unmapped_ids()
    if len(missing) == 0:
        return
    parts = library.iter_embeddings(ids=missing.tolist(), chunk=TRANSFORM_CHUNK)
    ids, xy = _transform_all(parts, transform)
    _write(library, ids, xy, None)
    log.info("placed %d new photos on the map", len(ids))


def _sample(library: Library, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """(ids ascending, their vectors, whether that is every photo) for a seeded sample."""
    ids = np.sort(library.embedding_ids())
    everything = len(ids) <= size
    if not everything:
        ids = np.sort(np.random.default_rng(SEED).choice(ids, size, replace=False))
    parts = list(library.iter_embeddings(ids=None if everything else ids.tolist()))
    found = np.concatenate([p[0] for p in parts])
    vectors = np.concatenate([p[1] for p in parts])
    order = np.argsort(found, kind="stable")
    return found[order], vectors[order], everything


def _transform_all(
    parts: Iterable[tuple[np.ndarray, np.ndarray]],
    transform: Transform,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of every vector, chunk by chunk; ``known`` (sorted ids, xy) are kept as is."""
    out_ids, out_xy = [], []
    for ids, vectors in _rebatch(parts, TRANSFORM_CHUNK):
        xy = np.empty((len(ids), 2), np.float32)
        todo = np.ones(len(ids), dtype=bool)
        if known is not None:
            todo = ~np.isin(ids, known[0])
            xy[~todo] = known[1][np.searchsorted(known[0], ids[~todo])]
        if todo.any():
            xy[todo] = transform(vectors[todo])
        out_ids.append(ids)
        out_xy.append(xy)
    if not out_ids:
        return np.empty(0, np.int64), np.empty((0, 2), np.float32)
    return np.concatenate(out_ids), np.concatenate(out_xy)


def _rebatch(
    parts: Iterable[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Regroup (ids, vectors) chunks of any size into chunks of about ``size``."""
    ids, vectors, held = [], [], 0
    for part_ids, part_vectors in parts:
        ids.append(part_ids)
        vectors.append(part_vectors)
        held += len(part_ids)
        if held >= size:
            yield np.concatenate(ids), np.concatenate(vectors)
            ids, vectors, held = [], [], 0
    if held:
        yield np.concatenate(ids), np.concatenate(vectors)


def _write(library: Library, ids: np.ndarray, xy: np.ndarray, state: dict | None) -> None:
    """Store points in chunks; with a state, the first chunk replaces the whole map (a photo
    deleted while we computed is left out by the store)."""
    for start in range(0, max(len(ids), 1), WRITE_CHUNK):
        chunk = slice(start, start + WRITE_CHUNK)
        library.upsert_map_points(ids[chunk], xy[chunk], state if start == 0 else None)


def _stored_points(library: Library) -> MapPoints:
    ids, xy = library.map_points()  # only photos placed from the vector they have now
    order = np.argsort(ids, kind="stable")
    state = library.map_state() or {}
    return MapPoints(ids[order], xy[order], state.get("method", ""))


def _stored_transform(library: Library, method: str) -> Transform | None:
    """The stored projection, if it is a ``method`` one that can still be used."""
    state = library.map_state()
    if state is None or state.get("method") != method:
        return None
    model = library.model
    if model is not None and state.get("dim") != model.dim:
        return None
    if method == "pca":
        try:
            return Pca(np.array(state["mean"]), np.array(state["components"])).transform
        except (KeyError, ValueError):
            return None
    return _load_umap(library, state)


# -- UMAP and plotly, both optional -------------------------------------------------------


def _import_umap():
    try:
        import umap
    except ImportError as error:
        raise ConfigError(
            f"the UMAP map needs umap-learn ({error}); {INSTALL_HINT}, or use method 'pca'"
        ) from error
    return umap


def _fit_umap(sample: np.ndarray):
    umap = _import_umap()
    model = umap.UMAP(
        n_components=2,
        metric="cosine",
        random_state=SEED,
        n_neighbors=min(15, len(sample) - 1),
        n_jobs=1,  # a seeded UMAP runs single-threaded anyway; saying so silences its warning
    )
    model.fit(np.ascontiguousarray(sample, dtype=np.float32))
    return model


def _save_umap(library: Library, model) -> str:
    """Pickle the fitted model into the derived cache; returns its sha256 for the map state."""
    data = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    library.derived.save_blob(UMAP_BLOB, data)
    return hashlib.sha256(data).hexdigest()


def _load_umap(library: Library, state: dict) -> Transform | None:
    data = library.derived.load_blob(UMAP_BLOB)
    if data is None:
        log.warning("the map's UMAP model is missing from the derived cache; refitting")
        return None
    if hashlib.sha256(data).hexdigest() != state.get("model_sha256"):
        log.warning("the map's UMAP model does not match the stored map; refitting")
        return None
    _import_umap()
    try:
        # Unpickling runs code from the data: this is our own cache in the user's data dir,
        # written by _save_umap and checked against the hash stored with the map.
        return pickle.loads(data).transform
    except Exception as error:  # an unpicklable model (e.g. another umap version) is refitted
        log.warning("cannot load the map's UMAP model (%s); refitting", error)
        return None
