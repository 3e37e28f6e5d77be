"""Exact answers and the latency and recall@10 of a library's searches against them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from vitsearch.records import Filters
from vitsearch.search.query import nearest
from vitsearch.store import Library
from vitsearch.store.vectors import VectorIndex

K = 10
WARMUP = 5


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float
    recall: float

    def __str__(self) -> str:
        return f"p50 {self.p50_ms:7.2f} ms  p99 {self.p99_ms:7.2f} ms  recall@10 {self.recall:.4f}"


def rows_of(base: np.ndarray, chunk: int = 100_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, vectors) of an in-memory matrix, in chunks: what ``exact_top`` reads."""
    for start in range(0, len(base), chunk):
        part = base[start : start + chunk]
        yield np.arange(start, start + len(part)), part


class TopK:
    """The exact k best (id, score) per query, over chunks of vectors given one at a time;
    ``allowed`` ids only when given."""

    def __init__(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> None:
        self.queries, self.k, self.allowed = queries, k, allowed
        self.scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), k), dtype=np.int64)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        scores = self.queries @ vectors.T
        if self.allowed is not None:
            scores[:, ~np.isin(ids, self.allowed)] = -np.inf
        found = np.broadcast_to(ids, scores.shape)
        scores, found = np.hstack([self.scores, scores]), np.hstack([self.ids, found])
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        self.scores, self.ids = (np.take_along_axis(x, top, 1) for x in (scores, found))

    def best(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), best first."""
        order = np.argsort(-self.scores, axis=1, kind="stable")
        return np.take_along_axis(self.ids, order, 1), np.take_along_axis(self.scores, order, 1)


def exact_top(
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores) of the exact k best per query over (ids, vectors) chunks, best first."""
    top = TopK(queries, k, allowed)
    for ids, vectors in chunks:
        top.add(ids, vectors)
    return top.best()


def index_lists(index: VectorIndex) -> int:
    return faiss.extract_index_ivf(index.index).nlist if index.kind == "ivf" else 0


def latency(seconds: Sequence[float], found: Sequence[np.ndarray], truth: np.ndarray) -> Latency:
    ms = np.asarray(seconds) * 1000
    hits = [len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)]
    return Latency(
        float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(np.mean(hits)) / K
    )


def timed_runs(run: Callable[[np.ndarray], np.ndarray], queries: np.ndarray):
    """(seconds, found ids) per query, after a few untimed warm-up queries."""
    for q in queries[:WARMUP]:
        run(q)
    seconds, found = [], []
    for q in queries:
        started = time.perf_counter()
        found.append(run(q))
        seconds.append(time.perf_counter() - started)
    return seconds, found


def query_library(library: Library, queries: np.ndarray, filters: Filters):
    def run(q: np.ndarray) -> np.ndarray:
        return np.array([hit.id for hit in nearest(library, q, K, filters)], dtype=np.int64)

    return timed_runs(run, queries)
