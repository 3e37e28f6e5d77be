"""The FAISS index: a derived cache of the embeddings in SQLite, rebuilt or caught up on open."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import faiss
import numpy as np

from vitsearch.store.database import Database

log = logging.getLogger(__name__)


class VectorIndex:
    """Inner-product search over unit vectors, with FAISS ids equal to image ids."""

    def __init__(self, dim: int, index: faiss.Index | None = None, seq: int = 0) -> None:
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.seq = seq  # the last database write this index is known to include

    def __len__(self) -> int:
        return self.index.ntotal

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

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

        The restriction is an ID selector inside the search, so k hits come back whenever
        k allowed vectors exist.
        """
        limit = len(self) if allowed is None else min(len(self), len(allowed))
        if limit == 0 or k < 1:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed.astype(np.int64)))
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
        limits, scores, found = self.index.range_search(queries, float(threshold))
        sources = np.repeat(np.asarray(ids, dtype=np.int64), np.diff(limits).astype(np.int64))
        keep = sources < found
        return sources[keep], found[keep], scores[keep]

    def save(self, path: Path) -> None:
        """Write atomically (temp file + rename), then the sidecar: it may lag, never lead."""
        temp = path.with_name(path.name + f".tmp{os.getpid()}")
        faiss.write_index(self.index, str(temp))
        os.replace(temp, path)
        _write_json(
            _sidecar(path),
            {"seq": self.seq, "dim": self.dim, "count": len(self), "saved_at": time.time()},
        )


def open_vector_index(db: Database, path: Path, dim: int) -> tuple[VectorIndex, bool]:
    """The FAISS index in step with the database, and whether it had to change to get there.

    A missing, unreadable or wrong-sized file is rebuilt from SQLite; a lagging one is caught
    up (rows written since its last save re-added, missing ids added, removed ids dropped).
    """
    loaded = _load(path, dim)
    if loaded is None:
        index = VectorIndex(dim, seq=db.max_seq())
        for ids, vectors in db.iter_embeddings():
            index.upsert(ids, vectors)
        log.debug("built the vector index from the database (%d vectors)", len(index))
        return index, True
    changed = catch_up(loaded, db)
    return loaded, changed


def catch_up(index: VectorIndex, db: Database) -> bool:
    """Make the index hold exactly the database's embeddings; True if anything changed."""
    changed = False
    target_seq = db.max_seq()
    for ids, vectors in db.iter_embeddings(since_seq=index.seq):
        index.upsert(ids, vectors)
        changed = True
    in_db, in_index = db.embedding_ids(), index.ids()
    stale = np.setdiff1d(in_index, in_db)
    missing = np.setdiff1d(in_db, in_index)
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


def _load(path: Path, dim: int) -> VectorIndex | None:
    if not path.exists():
        return None
    try:
        meta = json.loads(_sidecar(path).read_text())
        index = faiss.read_index(str(path))
    except Exception as exc:  # a torn or foreign file: FAISS raises RuntimeError, json ValueError
        log.warning("vector index %s is unreadable (%s); rebuilding it", path, exc)
        return None
    if index.d != dim or meta.get("dim") != dim or not isinstance(index, faiss.IndexIDMap2):
        log.warning("vector index %s does not match the library; rebuilding it", path)
        return None
    return VectorIndex(dim, index=index, seq=int(meta.get("seq", 0)))


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _write_json(path: Path, data: dict) -> None:
    temp = path.with_name(path.name + f".tmp{os.getpid()}")
    temp.write_text(json.dumps(data))
    os.replace(temp, path)
