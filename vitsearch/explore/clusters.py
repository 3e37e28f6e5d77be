"""Zero-label clustering: spherical k-means on the stored embeddings, stored for instant reuse.

``k="auto"`` tries a few k around sqrt(n/2) (halved to doubled, bounded to 2..200) and keeps
the one with the best silhouette (cosine distance) on a seeded sample of at most 2,000
photos. The centroids are trained on at most 256 photos per centroid: the seeded subsample FAISS
itself would take, read from SQLite, so the centroids are those of handing FAISS every vector.
Then every photo is assigned chunk by chunk as it is read, so no step holds the whole matrix
(3 GB at a million 768-d photos) and memory stays bounded from 2 photos to millions.

A cluster's name must be true of most of its photos. It is a label only when that label is the
top label of most of them (on trained weights the most frequent label of a cluster is often
the top label of a seventh of it and true of none), without WordNet ids and with capitals
("golden retriever · Labrador retriever"); else the narrowest WordNet kind that most of them are
("dog" for thirty dogs of twenty breeds, "turtle" rather than "anapsid", which spans the same
classes); else "mixed". Placeholder labels of a checkpoint's unnamed classes ("unknown_30",
"LABEL_7") never name one, and their photos count as not described.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from functools import cache

import faiss
import numpy as np

from vitsearch.errors import VitsearchError
from vitsearch.labels.hierarchy import imagenet_hierarchy
from vitsearch.records import Cluster, short_label
from vitsearch.store import Library

log = logging.getLogger(__name__)

SEED = 1234
MAX_AUTO_K = 200
SILHOUETTE_SAMPLE = 2000
TRAIN_POINTS_PER_CENTROID = 256
RESTARTS = 5  # for small k, where one unlucky start matters; large k gains nothing from them
MANY_CLUSTERS = 100
STALE_FRACTION = 0.1  # recompute once the library changed by this much
REPRESENTATIVES = 6
NAME_LABELS = 3
# A name must be true of most of a cluster's photos. On trained weights a cluster's most frequent
# top label often is not: real-vit-tiny on the ImageNet sample named a cluster of 101 mixed
# photos "backpack", the top label of 14% of them, true of none (benchmarks/
# bench_cluster_names.py). Measured there for k = auto (17), 40 and 80: a label names a cluster
# when it is the top label of LABEL_SHARE of its photos, a kind when KIND_SHARE of them have a top
# label of that kind; 0.7 and 0.7 put 79%, 70% and 45% of the named clusters' photos under a
# true name (0.5 and 0.6: 79%, 28%, 26%). Top-5 shares are no evidence: labels in the top 5 of
# 55-73% of a cluster ("gazelle", "iPod") were true of 1-3% of it.
LABEL_SHARE = 0.7
SECOND_NAME_SHARE = 0.2  # a further label joins the name when this share of photos has it
KIND_SHARE = 0.7
MIXED = "mixed"  # the name of a cluster that no label nor kind describes
NAMING = 2  # stored clusters named by older rules are named again
GENERIC_KIND = 130  # kinds over this many ImageNet-1k classes say little ("animal", "artifact")
# A checkpoint's classes without a name: real-vit-tiny's "unknown_30", transformers' "LABEL_7".
PLACEHOLDER_LABEL = re.compile(r"(unknown|label)_\d+", re.IGNORECASE)


def clusters(library: Library, k: int | str = "auto", recompute: bool = False) -> list[Cluster]:
    """The library's clusters, largest first: stored ones when still fresh, else recomputed."""
    state = library.cluster_state()
    if recompute or _stale(state, library.embedding_count(), k):
        compute_clusters(library, k)
    return stored_clusters(library)


def stored_clusters(library: Library, representatives: int = REPRESENTATIVES) -> list[Cluster]:
    chosen = library.cluster_representatives(representatives)
    return [
        Cluster(cid, name, size, cohesion, tuple(chosen.get(cid, ())))
        for cid, name, size, cohesion in library.clusters()
    ]


def compute_clusters(library: Library, k: int | str = "auto") -> dict:
    """Cluster every embedding and store the result; returns the stored state."""
    started = time.perf_counter()
    ids = library.embedding_ids()
    if len(ids) < 2:
        raise VitsearchError("clustering needs at least 2 indexed photos")
    chosen = choose_k(library, ids) if k == "auto" else int(k)
    chosen = max(1, min(chosen, len(ids)))
    centroids = train_centroids(_training_set(library, ids, chosen), chosen)
    ids, assignment, scores = _assign_all(library, centroids)
    rows = [_cluster_row(library, c, centroids[c], ids, assignment, scores) for c in range(chosen)]
    state = {
        "k": chosen,
        "requested": str(k),
        "count": len(ids),
        "seed": SEED,
        "naming": NAMING,
        "computed_at": time.time(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    library.replace_clusters([r for r in rows if r[2] > 0], ids, assignment, scores, state)
    log.info("clustered %d photos into %d clusters in %.1fs", len(ids), chosen, state["seconds"])
    return state


def choose_k(library: Library, ids: np.ndarray) -> int:
    """The k with the best silhouette among a few around sqrt(n/2), for the photos ``ids``
    (every id with a vector, ascending)."""
    n = len(ids)
    if n < 4:
        return 1 if n < 3 else 2
    centre = max(2.0, np.sqrt(n / 2))
    candidates = sorted(
        {
            int(np.clip(round(centre * f), 2, min(MAX_AUTO_K, n - 1)))
            for f in (0.5, 0.75, 1.0, 1.5, 2.0)
        }
    )
    sample = _rows_at(library, ids, _sample_rows(n, SILHOUETTE_SAMPLE))
    scored = []
    for k in candidates:
        labels, _ = assign(sample, train_centroids(_training_set(library, ids, k), k))
        scored.append((silhouette(sample, labels), -k))
    best = max(scored)
    return -best[1]


def train_centroids(vectors: np.ndarray, k: int) -> np.ndarray:
    """k spherical centroids of ``vectors`` (FAISS keeps a seeded subsample of at most
    TRAIN_POINTS_PER_CENTROID per centroid: :func:`training_rows`)."""
    # Seeded restarts: one unlucky random start can split a group and merge two others.
    kmeans = faiss.Kmeans(
        vectors.shape[1],
        k,
        niter=25,
        nredo=RESTARTS if k < MANY_CLUSTERS else 1,
        seed=SEED,
        spherical=True,
        verbose=False,
        max_points_per_centroid=TRAIN_POINTS_PER_CENTROID,
        min_points_per_centroid=1,
    )
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.centroids


def assign(vectors: np.ndarray, centroids: np.ndarray, chunk: int = 65536):
    """(cluster of each vector, its cosine to that centroid), in bounded chunks."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    labels = np.empty(len(vectors), dtype=np.int64)
    scores = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), chunk):
        part = np.ascontiguousarray(vectors[start : start + chunk], dtype=np.float32)
        found_scores, found = index.search(part, 1)
        labels[start : start + len(part)] = found[:, 0]
        scores[start : start + len(part)] = found_scores[:, 0]
    return labels, scores


def silhouette(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette with cosine distance (vectors are unit length)."""
    present, members = np.unique(labels, return_inverse=True)
    if len(present) < 2:
        return -1.0
    distances = 1.0 - vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    one_hot = np.eye(len(present))[members]
    sizes = one_hot.sum(axis=0)
    totals = distances @ one_hot  # summed distance from each point to each cluster
    rows = np.arange(len(vectors))
    own_size = sizes[members]
    a = totals[rows, members] / np.maximum(own_size - 1, 1)
    mean_to = totals / sizes
    mean_to[rows, members] = np.inf
    b = mean_to.min(axis=1)
    values = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
    return float(values.mean())  # a singleton counts 0, by convention


def cluster_name(label_counts: dict[str, int], size: int) -> str:
    """A name true of most of a cluster's ``size`` photos, from their top labels' counts: a
    label that LABEL_SHARE of them have as their top label ("golden retriever", "golden
    retriever · Labrador retriever" when a second has SECOND_NAME_SHARE; each label's first
    synonym as written: no WordNet id, capitals kept), else the narrowest WordNet kind that
    KIND_SHARE of them are ("dog"), else MIXED. Placeholder labels name nothing but their photos
    count; "" when no label is left (the caller names it by its number)."""
    named = {label: n for label, n in label_counts.items() if not is_placeholder(label)}
    if not named:
        return ""
    ranked = Counter(named).most_common(NAME_LABELS)
    if ranked[0][1] < LABEL_SHARE * size:
        return common_kind(named, size) or MIXED
    names: list[str] = []
    for label, count in ranked:
        if (names and count < SECOND_NAME_SHARE * size) or short_label(label) in names:
            continue
        names.append(short_label(label))
    return " · ".join(names)


def is_placeholder(label: str) -> bool:
    return PLACEHOLDER_LABEL.fullmatch(short_label(label)) is not None


def common_kind(label_counts: dict[str, int], size: int) -> str | None:
    """The narrowest WordNet kind (not a class) that KIND_SHARE of ``size`` photos' top labels
    fall under, when no single label does; None for labels outside ImageNet-1k."""
    if not label_counts or max(label_counts.values()) >= KIND_SHARE * size:
        return None  # one label already says what most photos are
    hierarchy = imagenet_hierarchy()
    covered: Counter[str] = Counter()
    for label, count in label_counts.items():
        wnid = hierarchy.wnid_of(label)
        for node in hierarchy.ancestors[wnid] if wnid else ():
            covered[node] += count
    breadth = _kind_breadth()
    # Of kinds over the same classes (turtle < chelonian < anapsid), the lowest is the word.
    kinds = [
        (breadth[node], -len(hierarchy.above(node)), node)
        for node, count in covered.items()
        if count >= KIND_SHARE * size and breadth[node] <= GENERIC_KIND
    ]
    return short_label(hierarchy.names[min(kinds)[2]]) if kinds else None


@cache
def _kind_breadth() -> dict[str, int]:
    """How many ImageNet-1k classes lie under each WordNet kind."""
    hierarchy = imagenet_hierarchy()
    return Counter(node for wnid in hierarchy.classes for node in hierarchy.ancestors[wnid])


def _cluster_row(library, cid, centroid, ids, assignment, scores):
    members = assignment == cid
    member_ids = ids[members]
    size = int(members.sum())
    cohesion = float(scores[members].mean()) if size else 0.0
    name = cluster_name(library.top_label_counts(member_ids.tolist()), size) or f"cluster {cid + 1}"
    return (cid, name, size, cohesion, centroid)


def _stale(state: dict | None, count: int, k: int | str) -> bool:
    if (
        state is None
        or (k != "auto" and int(k) != state["k"])
        or (k == "auto") != (state.get("requested") == "auto")
        or state.get("naming", 1) != NAMING
    ):
        return True
    return abs(count - state["count"]) > STALE_FRACTION * max(state["count"], 1)


def training_rows(n: int, k: int) -> np.ndarray:
    """Positions among ``n`` vectors of those FAISS's k-means trains ``k`` centroids on, in
    its order: all of them when there are at most TRAIN_POINTS_PER_CENTROID per centroid,
    else the head of FAISS's own seeded permutation (``Clustering::subsample_training_set``),
    so reading only these from SQLite trains the centroids that all n vectors would."""
    if n <= k * TRAIN_POINTS_PER_CENTROID:
        return np.arange(n)
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, SEED)
    return perm[: k * TRAIN_POINTS_PER_CENTROID].astype(np.int64)


def _training_set(library: Library, ids: np.ndarray, k: int) -> np.ndarray:
    return _rows_at(library, ids, training_rows(len(ids), k))


def _assign_all(library: Library, centroids: np.ndarray):
    """(ids, cluster of each, its cosine to that centroid) for every embedding, read and
    assigned chunk by chunk."""
    parts = [(ids, *assign(vectors, centroids)) for ids, vectors in library.iter_embeddings()]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


def _rows_at(library: Library, ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The vectors of ``ids[positions]``, in that order (a photo removed meanwhile left out)."""
    wanted = ids[positions]
    order = np.argsort(wanted, kind="stable")
    ascending = wanted[order]
    rows: np.ndarray | None = None
    found = np.zeros(len(wanted), dtype=bool)
    for chunk_ids, vectors in library.iter_embeddings(ids=ascending.tolist()):
        if rows is None:
            rows = np.empty((len(wanted), vectors.shape[1]), dtype=np.float32)
        at = order[np.searchsorted(ascending, chunk_ids)]
        rows[at], found[at] = vectors, True
    if rows is None:
        return np.empty((0, 1), np.float32)
    return rows if found.all() else rows[found]  # a mask copies: 0.8 GB of training set at 1M


def _sample_rows(n: int, size: int) -> np.ndarray:
    """Positions of a seeded sample of ``size`` of ``n`` rows, ascending (all when fewer)."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(n, size, replace=False))
