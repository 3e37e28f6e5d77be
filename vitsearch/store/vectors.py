"""The FAISS index: a derived cache of the embeddings in SQLite, rebuilt or caught up on open.

The kind follows the library's size: exact search (``IndexIDMap2`` over ``IndexFlatIP``) up to
``FLAT_LIMIT`` vectors, where a query scans at most ~75 MB (~2.5 ms on one core); above it an
inverted file (``IndexIVFFlat``, inner product, ~4·sqrt(n) lists trained on a seeded sample,
``NPROBE`` lists probed), which keeps a query at 1M photos to ~3 ms with recall@10 of 1.0 on
photo-like (clustered) synthetic embeddings (benchmarks/bench_explore.py). Exact search at 100k
took 27 ms on this machine, so the switch comes early. Ids are always image ids, so results map
straight to SQLite rows; either kind supports add, remove, ID-selector filters and range search.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from vitsearch.errors import DiskFullError
from vitsearch.machine.fileio import replacing, write_atomically
from vitsearch.store.embeddings import EmbeddingRows

log = logging.getLogger(__name__)

FLAT_LIMIT = 25_000
NPROBE = 32
RANGE_NPROBE = 8  # range search for duplicates: found every planted pair at 4x the speed of 32
TRAIN_POINTS_PER_LIST = 40
RETRAIN_GROWTH = 4.0  # retrain the inverted file once the library is this many times larger
SEED = 1234


class VectorIndex:
    """Inner-product search over unit vectors, with FAISS ids equal to image ids."""

    def __init__(
        self, dim: int, index: faiss.Index | None = None, seq: int = 0, trained_on: int = 0
    ) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.seq = seq  # the last database write this index is known to include
        self.trained_on = trained_on  # vectors in the library when an inverted file was trained
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = NPROBE

    @property
    def kind(self) -> str:
        return "flat" if isinstance(self.index, faiss.IndexIDMap2) else "ivf"

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        if self.kind == "flat":
            return faiss.vector_to_array(self.index.id_map).astype(np.int64)
        ivf = faiss.extract_index_ivf(self.index)
        lists = [
            faiss.rev_swig_ptr(ivf.invlists.get_ids(i), ivf.invlists.list_size(i)).copy()
            for i in range(ivf.nlist)
            if ivf.invlists.list_size(i)
        ]
        return np.concatenate(lists).astype(np.int64) if lists else np.empty(0, np.int64)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(ids))

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the k nearest, best first; only ``allowed`` ids when given.

        The restriction is an ID selector inside the search, not a filter after it.
        """
        limit = len(self) if allowed is None else min(len(self), len(allowed))
        if limit == 0 or k < 1:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        selector = None if allowed is None else _bitmap_selector(allowed)
        if self.kind == "ivf":
            params = faiss.SearchParametersIVF(sel=selector, nprobe=NPROBE)
        else:
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        with faiss_threads(1):  # one query: more threads only fight the indexer for the cores
            scores, ids = self.index.search(query, min(k, limit), params=params)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def pairs_above(
        self, ids: np.ndarray, vectors: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) for every indexed b with cosine >= threshold to a query a, with a < b.

        FAISS range search: memory is bounded by the number of close pairs, not by n².
        """
        if len(self) == 0 or len(ids) == 0:
            empty = np.empty(0, np.int64)
            return empty, empty, np.empty(0, np.float32)
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        params = faiss.SearchParametersIVF(nprobe=RANGE_NPROBE) if self.kind == "ivf" else None
        limits, scores, found = self.index.range_search(queries, float(threshold), params=params)
        sources = np.repeat(np.asarray(ids, dtype=np.int64), np.diff(limits).astype(np.int64))
        keep = sources < found
        return sources[keep], found[keep], scores[keep]

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename), then the sidecar: it may lag, never lead."""
        with replacing(path) as temp:
            try:
                faiss.write_index(self.index, str(temp))
            except RuntimeError as exc:  # FAISS reports a short write in its message only
                if "No space left on device" in str(exc):
                    raise DiskFullError(path.parent) from None
                raise
        meta = {
            "seq": self.seq,
            "dim": self.dim,
            "count": len(self),
            "kind": self.kind,
            "trained_on": self.trained_on,
            "saved_at": time.time(),
        }
        _write_json(_sidecar(path), meta)


def open_vector_index(db: EmbeddingRows, path: Path, dim: int) -> tuple[VectorIndex, bool]:
    """The FAISS index in step with the database, and whether it had to change to get there.

    A missing, unreadable or wrong-sized file is rebuilt from SQLite; a lagging one is caught
    up (rows written since its last save re-added, missing ids added, removed ids dropped).
    """
    loaded = _load(path, dim)
    if loaded is None:
        return build_index(db, dim), True
    return loaded, catch_up(loaded, db)


def build_index(db: EmbeddingRows, dim: int) -> VectorIndex:
    """A fresh index of every embedding, of the kind that suits the library's size."""
    count = db.embedding_count()
    seq = db.max_seq()
    if count <= FLAT_LIMIT:
        index = VectorIndex(dim, seq=seq)
    else:
        index = VectorIndex(dim, _trained_ivf(db, dim, count), seq=seq, trained_on=count)
    for ids, vectors in db.iter_embeddings():
        index.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    log.debug("built a %s vector index from the database (%d vectors)", index.kind, len(index))
    return index


def wants_rebuild(index: VectorIndex) -> bool:
    """Whether the library outgrew (or shrank out of) the index kind it has."""
    if index.kind == "flat":
        return len(index) > FLAT_LIMIT
    return len(index) <= FLAT_LIMIT // 2 or len(index) > RETRAIN_GROWTH * index.trained_on


def catch_up(index: VectorIndex, db: EmbeddingRows) -> bool:
    """Make the index hold exactly the database's embeddings; True if anything changed."""
    changed = False
    target_seq = db.max_seq()
    for ids, vectors in db.iter_embeddings(since_seq=index.seq):
        index.upsert(ids, vectors)
        changed = True
    in_db, in_index = db.embedding_ids(), index.ids()
    stale = np.setdiff1d(in_index, in_db, assume_unique=True)
    missing = np.setdiff1d(in_db, in_index, assume_unique=True)
    if len(stale):
        index.remove(stale)
        changed = True
    for ids, vectors in db.iter_embeddings(ids=missing.tolist()) if len(missing) else ():
        index.upsert(ids, vectors)
        changed = True
    if changed:
        log.info(
            "vector index caught up with the database (%d added, %d removed)",
            len(missing),
            len(stale),
        )
    index.seq = max(index.seq, target_seq)
    return changed


def _trained_ivf(db: EmbeddingRows, dim: int, count: int) -> faiss.Index:
    lists = int(2 ** round(math.log2(max(256, 4 * math.sqrt(count)))))
    ids = db.embedding_ids()
    rng = np.random.default_rng(SEED)
    sample_ids = rng.choice(ids, min(len(ids), TRAIN_POINTS_PER_LIST * lists), replace=False)
    sample = _read_into(db, np.sort(sample_ids), dim)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = SEED
    index.train(sample)
    index.own_fields = True
    quantizer.this.disown()  # the inverted file owns its quantizer from here on
    return index


def _read_into(db: EmbeddingRows, ids: np.ndarray, dim: int) -> np.ndarray:
    """The vectors of ``ids`` in one array filled chunk by chunk (0.5 GB of training sample
    at a million photos: a list of chunks and its concatenation would hold it twice)."""
    out = np.empty((len(ids), dim), dtype=np.float32)
    filled = 0
    for _ids, vectors in db.iter_embeddings(ids=ids.tolist()):
        out[filled : filled + len(vectors)] = vectors
        filled += len(vectors)
    return out[:filled]


def _load(path: Path, dim: int) -> VectorIndex | None:
    if not path.exists():
        return None
    try:
        meta = json.loads(_sidecar(path).read_text())
        index = faiss.read_index(str(path))
    except Exception as exc:  # a torn or foreign file: FAISS raises RuntimeError, json ValueError
        log.warning("vector index %s is unreadable (%s); rebuilding it", path, exc)
        return None
    known = isinstance(index, (faiss.IndexIDMap2, faiss.IndexIVFFlat))
    if index.d != dim or meta.get("dim") != dim or not known:
        log.warning("vector index %s does not match the library; rebuilding it", path)
        return None
    return VectorIndex(
        dim, index=index, seq=int(meta.get("seq", 0)), trained_on=int(meta.get("trained_on", 0))
    )


def _bitmap_selector(allowed: np.ndarray) -> faiss.IDSelector:
    """A bitmap over image ids (dense autoincrement keys): ~0.2 ms to build at 1M photos,
    against several ms for a hash-set ``IDSelectorBatch``."""
    if len(allowed) == 0:
        return faiss.IDSelectorBatch(np.empty(0, np.int64))
    mask = np.zeros(int(allowed.max()) + 1, dtype=bool)
    mask[allowed] = True
    return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))


@contextmanager
def faiss_threads(count: int) -> Iterator[None]:
    """FAISS's OpenMP thread count inside the block."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def saved_kind(path: Path) -> tuple[str, int] | None:
    """(kind, trained_on) of the index file at ``path``, from its sidecar."""
    meta = _saved_meta(path)
    try:
        return None if meta is None else (meta.get("kind", "flat"), int(meta.get("trained_on", 0)))
    except (TypeError, ValueError):
        return None


def saved_state(path: Path) -> tuple[int, int] | None:
    """(last write number, vector count) of the index file at ``path``, from its sidecar,
    when both files are there."""
    meta = _saved_meta(path)
    try:
        return None if meta is None or not path.exists() else (int(meta["seq"]), int(meta["count"]))
    except (KeyError, TypeError, ValueError):
        return None


def _saved_meta(path: Path) -> dict | None:
    try:
        meta = json.loads(_sidecar(path).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_json(path: Path, data: dict) -> None:
    write_atomically(path, json.dumps(data))
