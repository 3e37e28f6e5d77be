"""Exploring a big library: query latency and recall, clustering and duplicates, 10k-1M photos.

Run: ``python benchmarks/bench_explore.py [--sizes 10000,100000,1000000] [--queries N]
[--dim 768]``. Nothing is written outside a temporary directory; no model, no network.

The vectors are synthetic but shaped like photo embeddings: a few thousand themes (~n/300,
50..5000) on the unit sphere, each holding scenes of ~4 shots (a burst, an event), each photo
its scene plus noise. A photo's cosine to its theme centre is ~0.8 and to its nearest other
photo ~0.84, while the 10th neighbour is already down at ~0.67; both means are printed.
Uniform random vectors would have no neighbour structure to find. About 0.1% of the photos are
planted near-duplicates (cosine ~0.98 to another photo) for the duplicate finder.
Such well-separated themes are easy for an inverted file (recall@10 stays 1.0 down to nprobe 8,
also with low-rank or hierarchical themes), so read recall here as an upper bound: check it
on real embeddings. The latencies and build times do not depend on that.

They go through the store API like the indexer's writes (``write_batch`` in chunks inside one
writer, whose close builds and saves the FAISS cache), so every timing includes SQLite. Writing
goes at ~1k rows/s, so ``--write-budget`` caps the rows written; when it does, the FAISS index
that ``build_index`` would make for the full size is also built from memory and measured
(latency and recall of the index alone, plus the SQL time measured on the real library).

Beside every figure is this process's peak resident memory in that phase (the kernel's
high-water mark, reset per phase). The synthetic matrix is dropped once written: the queries
and their exact top-10s are read back from SQLite, as everything after the write is.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
from _memory import RssMeter, gb, peak_rss
from _recall import (
    K,
    Latency,
    TopK,
    exact_top,
    index_lists,
    latency,
    query_library,
    rows_of,
    timed_runs,
)
from _synthetic import (
    FOLDER_A,
    ROOTS,
    SEED,
    Explored,
    build_vectors,
    explored,
    flat_rows,
    make_queries,
    noise,
    unit,
    write_rows,
)
from _timing import CpuMeter, load_average

from vitsearch.explore.clusters import compute_clusters
from vitsearch.explore.duplicates import QUERY_CHUNK, find_duplicates
from vitsearch.machine.hardware import cpu_name
from vitsearch.records import Filters
from vitsearch.store import Library, open_library
from vitsearch.store.vectors import NPROBE, VectorIndex, build_index, faiss_threads

DUPLICATE_NOISE = 0.2  # a planted near-duplicate: cosine ~0.98 to its original
DUPLICATE_RATE = 0.001
STAT_SAMPLE = 500
BREAKDOWN_QUERIES = 50
NPROBES = (8, 16, 32, 64, 128)
AUTO_K_UP_TO = 20_000
LATENCY_TARGET_MS = 20.0
RECALL_TARGET = 0.95
TARGET_SIZE = 1_000_000
CLUSTER_TARGET_S = 60.0
CLUSTER_TARGET_SIZE = 100_000


@dataclass
class SizeResult:
    n: int
    written: int = 0
    write_s: float = 0.0
    build_s: float = 0.0
    kind: str = ""
    lists: int = 0
    open_s: float = 0.0
    plain: Latency | None = None
    filtered: Latency | None = None
    sql_ms: dict[str, float] = field(default_factory=dict)
    cluster: str = "not run"
    cluster_s: float | None = None
    duplicates: str = "not run"
    full: dict[str, object] = field(default_factory=dict)  # index-only at n when capped
    busy: dict[str, float] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)  # peak resident bytes per phase
    peak: int = 0  # the whole size's

    def memory(self, phase: str) -> str:
        return f"peak RSS {gb(self.rss[phase])}"


@contextmanager
def phase(result: SizeResult, name: str) -> Iterator[None]:
    """Cores other processes kept busy and this process's peak memory during the block."""
    with CpuMeter(result.busy, name), RssMeter(result.rss, name):
        yield


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark search, clustering and duplicates on synthetic photo embeddings."
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="library sizes")
    parser.add_argument("--queries", type=int, default=200, help="queries per measurement")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension")
    parser.add_argument(
        "--write-budget",
        type=float,
        default=600.0,
        help="seconds of SQLite writes per size; fewer rows are written beyond it (0: no cap)",
    )
    parser.add_argument("--cluster-k", type=int, default=1000, help=f"k above {AUTO_K_UP_TO:,}")
    parser.add_argument(
        "--cluster-max", type=int, default=200_000, help="skip clustering above this many photos"
    )
    parser.add_argument(
        "--dup-budget",
        type=float,
        default=300.0,
        help="skip duplicate finding when it is projected to take longer (seconds)",
    )
    return parser.parse_args(argv)


# -- synthetic data ----------------------------------------------------------------------------


def library_data(n: int, dim: int) -> Explored:
    """The library of ``n`` photos, duplicates planted (the same for the same n and dim)."""
    data = explored(n, dim)
    neighbour_stats(data)
    plant_duplicates(data)
    return data


def plant_duplicates(data: Explored) -> None:
    """Turn ~0.1% of the rows into near-duplicates of other rows (distinct photos)."""
    n, dim = data.vectors.shape
    count = max(1, int(n * DUPLICATE_RATE)) if n >= 4 else 0
    rng = np.random.default_rng(SEED + 1)
    rows = rng.choice(n, 2 * count, replace=False).reshape(count, 2)
    moved = data.vectors[rows[:, 0]] + noise(rng, (count, dim), DUPLICATE_NOISE)
    data.vectors[rows[:, 1]] = unit(moved)
    data.pairs = rows


def neighbour_stats(data: Explored) -> None:
    """Mean cosine of a sample of photos to their nearest and 10th-nearest other photo."""
    rng = np.random.default_rng(SEED + 2)
    sample = np.sort(rng.choice(len(data.vectors), min(STAT_SAMPLE, len(data.vectors)), False))
    _rows, scores = exact_top(rows_of(data.vectors), data.vectors[sample], K + 1)
    data.top1_cos, data.top10_cos = float(scores[:, 1].mean()), float(scores[:, K].mean())


def stored_vectors(library: Library, ids: np.ndarray) -> np.ndarray:
    """The stored vectors of ``ids``, in that order (repeats allowed), read from SQLite."""
    found = {}
    for chunk_ids, vectors in library.iter_embeddings(ids=np.unique(ids).tolist()):
        found.update(zip(chunk_ids.tolist(), vectors, strict=True))
    return np.stack([found[i] for i in ids.tolist()])


# -- the library -------------------------------------------------------------------------------


def sql_breakdown(library: Library, queries: np.ndarray, under: Filters) -> dict[str, float]:
    """Median ms of each part of ``nearest``: the filter's SQL, FAISS alone, the hits' SQL."""
    samples, short = [], 0
    for q in queries[:BREAKDOWN_QUERIES]:
        t0 = time.perf_counter()
        allowed = library.filtered_ids(under)
        t1 = time.perf_counter()
        ids, scores = library.vectors.search(q, K)
        t2 = time.perf_counter()
        kept, _ = library.vectors.search(q, K, allowed)
        t3 = time.perf_counter()
        library.hits(ids.tolist(), scores.tolist())
        t4 = time.perf_counter()
        with faiss_threads(1):
            library.vectors.search(q, K)
        samples.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3, time.perf_counter() - t4))
        short += len(kept) < min(K, len(allowed))
    medians = (np.median(np.array(samples), axis=0) * 1000).tolist()
    names = ("filtered_ids", "faiss", "faiss_filtered", "hits", "faiss_1_thread")
    out = dict(zip(names, medians, strict=True))
    out["short_filtered"] = short / len(samples)
    return out


def nprobe_sweep(
    index: VectorIndex, queries: np.ndarray, truth_ids: np.ndarray, allowed=None
) -> list[tuple[int, Latency]]:
    """Latency and recall of the inverted file alone at several nprobe values."""
    selector = None if allowed is None else faiss.IDSelectorBatch(allowed.astype(np.int64))
    rows = []
    for nprobe in NPROBES:
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)

        def run(q: np.ndarray, params=params) -> np.ndarray:
            _scores, ids = index.index.search(q.reshape(1, -1), K, params=params)
            return ids[0]

        rows.append((nprobe, latency(*timed_runs(run, queries), truth_ids)))
    return rows


def print_sweep(title: str, rows: list[tuple[int, Latency]]) -> None:
    print(f"  {title}")
    for nprobe, result in rows:
        print(f"    nprobe {nprobe:4d}{' (NPROBE)' if nprobe == NPROBE else '         '}  {result}")


# -- clustering and duplicates -----------------------------------------------------------------


def run_clusters(library: Library, n: int, args: argparse.Namespace, result: SizeResult) -> None:
    k: int | str = "auto" if n <= AUTO_K_UP_TO else args.cluster_k
    if n > args.cluster_max:
        result.cluster = f"skipped (k={k}, above --cluster-max {args.cluster_max:,})"
        return
    started = time.perf_counter()
    state = compute_clusters(library, k)
    result.cluster_s = time.perf_counter() - started
    result.cluster = f"k={state['k']} ({k}) in {result.cluster_s:.1f} s"


def planted_found(groups, pairs_ids: np.ndarray) -> tuple[int, int]:
    """(planted pairs that share a found group, found groups holding no planted pair)."""
    group_of = {m.id: g for g, group in enumerate(groups) for m in group.members}
    together = [
        group_of[a]
        for a, b in pairs_ids.tolist()
        if a in group_of and group_of.get(b) == group_of[a]
    ]
    return len(together), len(groups) - len(set(together))


def run_duplicates(
    library: Library, data: Explored, ids: np.ndarray, budget: float, result: SizeResult
) -> None:
    first = library.iter_embeddings(chunk=QUERY_CHUNK)
    chunk_ids, chunk = next(first)
    first.close()
    rows = np.arange(len(chunk_ids))
    started = time.perf_counter()
    library.vectors.pairs_above(chunk_ids, chunk, 0.95)
    projected = (time.perf_counter() - started) * len(ids) / len(rows)
    if projected > budget:
        result.duplicates = (
            f"skipped: one chunk of {len(rows):,} took "
            f"{projected * len(rows) / len(ids):.1f} s, so all would take "
            f"~{projected:.0f} s (> --dup-budget {budget:.0f} s)"
        )
        return
    written = data.pairs[(data.pairs < len(ids)).all(axis=1)]
    started = time.perf_counter()
    groups = find_duplicates(library, ("near",))
    seconds = time.perf_counter() - started
    hits, extra = planted_found(groups, ids[written])
    result.duplicates = (
        f"{seconds:.1f} s: {len(groups)} groups, {hits}/{len(written)} planted "
        f"pairs found, {extra} other groups"
    )


# -- the index alone at the full size ----------------------------------------------------------


class ArrayDb:
    """Just enough of the store's embedding rows for ``build_index``: the same vectors,
    without SQLite."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors
        self.ids = np.arange(1, len(vectors) + 1, dtype=np.int64)

    def embedding_count(self) -> int:
        return len(self.ids)

    def max_seq(self) -> int:
        return len(self.ids)

    def embedding_ids(self) -> np.ndarray:
        return self.ids

    def iter_embeddings(
        self, since_seq: int = 0, ids: Sequence[int] | None = None, chunk: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.arange(len(self.ids)) if ids is None else np.asarray(ids, np.int64) - 1
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            yield self.ids[part], self.vectors[part]


def index_only(data: Explored, queries: np.ndarray, sql: dict[str, float], n_lib: int) -> dict:
    """The index ``build_index`` makes for all rows, queried directly; SQL time added from the
    library (hits: as measured; the folder filter's SQL: scaled by the row count)."""
    n, dim = data.vectors.shape
    started = time.perf_counter()
    index = build_index(ArrayDb(data.vectors), dim)
    built = time.perf_counter() - started
    allowed = np.flatnonzero(data.in_a) + 1
    truth = exact_top(rows_of(data.vectors), queries, K)[0] + 1
    truth_a = exact_top(rows_of(data.vectors), queries, K, allowed - 1)[0] + 1
    plain = latency(*timed_runs(lambda q: index.search(q, K)[0], queries), truth)
    filtered = latency(*timed_runs(lambda q: index.search(q, K, allowed)[0], queries), truth_a)
    with faiss_threads(1):
        single = latency(*timed_runs(lambda q: index.search(q, K)[0], queries), truth)
    out = {
        "single": single,
        "build_s": built,
        "kind": index.kind,
        "lists": index_lists(index),
        "plain": plain,
        "filtered": filtered,
        "filter_sql_ms": sql["filtered_ids"] * n / n_lib,
    }
    out["nearest_p50_ms"] = plain.p50_ms + sql["hits"]
    if index.kind == "ivf":
        out["sweep"] = nprobe_sweep(index, queries, truth)
        out["sweep_a"] = nprobe_sweep(index, queries, truth_a, allowed)
    return out


# -- measuring and reporting -------------------------------------------------------------------


def measure_size(n: int, args: argparse.Namespace, home: Path) -> SizeResult:
    result = SizeResult(n)
    print(f"\n=== {n:,} photos ({load_average()}) ===")
    with RssMeter(result.rss, "all"):
        started = time.perf_counter()
        with phase(result, "synthetic"):
            data = library_data(n, args.dim)
        print(
            f"  synthetic: {time.perf_counter() - started:.1f} s; cosine to theme centre "
            f"{data.centre_cos:.3f}, to nearest other photo {data.top1_cos:.3f}, to 10th "
            f"{data.top10_cos:.3f}; {len(data.pairs)} near-duplicate pairs planted; "
            + result.memory("synthetic")
        )
        with phase(result, "write"):
            rows = flat_rows(data, ROOTS, np.where(data.in_a, 0, 1))
            ids, result.write_s = write_rows(home, args.dim, n, ROOTS, rows, args.write_budget)
        result.written = len(ids)
        data.vectors = np.empty((0, args.dim), np.float32)  # written: read back from SQLite
        del rows
        print(
            f"  write: {len(ids):,} rows in {result.write_s:.1f} s "
            f"({len(ids) / result.write_s:,.0f} rows/s); {result.memory('write')}"
        )
        with phase(result, "build"):
            result.build_s = build_vectors(home)
        print(
            f"  build index (read SQLite, train, add, save): {result.build_s:.1f} s; "
            + result.memory("build")
        )
        measure_library(home, data, ids, args, result)
        if len(ids) < n and result.sql_ms:
            with phase(result, "index-only"):
                full = library_data(n, args.dim)  # made again: nothing else holds it
                queries = make_queries(full.vectors.__getitem__, n, args.queries)
                result.full = index_only(full, queries, result.sql_ms, len(ids))
                del full
            print_full(result)
    result.peak = result.rss["all"]
    print(
        f"  other processes kept {', '.join(f'{p} {c:.2f}' for p, c in result.busy.items())} "
        f"cores busy; peak RSS of this size {gb(result.peak)} (process {gb(peak_rss())}); "
        + load_average()
    )
    return result


def measure_library(
    home: Path, data: Explored, ids: np.ndarray, args: argparse.Namespace, result: SizeResult
) -> None:
    rows = len(ids)
    under = Filters(under=FOLDER_A)
    with phase(result, "open"):
        started = time.perf_counter()
        library = open_library(home)
        index = library.vectors
        result.open_s = time.perf_counter() - started
    try:
        result.kind, result.lists = index.kind, index_lists(index)
        print(
            f"  reader open + load: {result.open_s:.2f} s; index {index.kind}"
            + (f" ({result.lists} lists, nprobe {NPROBE})" if result.lists else "")
            + f"; {result.memory('open')}"
        )
        with phase(result, "truth"):
            started = time.perf_counter()
            queries = make_queries(
                lambda rows: stored_vectors(library, ids[rows]), rows, args.queries
            )
            top, top_a = TopK(queries, K), TopK(queries, K, library.filtered_ids(under))
            for chunk_ids, vectors in library.iter_embeddings():
                top.add(chunk_ids, vectors)
                top_a.add(chunk_ids, vectors)
            truth, truth_a = top.best()[0], top_a.best()[0]
        print(
            f"  exact top-{K} of {len(queries)} queries, read from SQLite: "
            f"{time.perf_counter() - started:.1f} s; {result.memory('truth')}"
        )
        with phase(result, "queries"):
            result.plain = latency(*query_library(library, queries, Filters()), truth)
            result.filtered = latency(*query_library(library, queries, under), truth_a)
            result.sql_ms = sql_breakdown(library, queries, under)
        print(f"  nearest():                {result.plain}")
        print(f"  nearest(under={FOLDER_A}): {result.filtered}; {result.memory('queries')}")
        print(
            "  median ms inside nearest(): "
            + ", ".join(
                f"{name} {value:.2f}"
                for name, value in result.sql_ms.items()
                if name != "short_filtered"
            )
            + f"; filtered searches short of k: "
            f"{result.sql_ms['short_filtered']:.0%} (these fall back to exact via SQLite)"
        )
        if index.kind == "ivf":
            with phase(result, "sweeps"):
                print_sweep("nprobe sweep (FAISS only):", nprobe_sweep(index, queries, truth))
                allowed = library.filtered_ids(under)
                print_sweep(
                    "nprobe sweep, filtered (FAISS only):",
                    nprobe_sweep(index, queries, truth_a, allowed),
                )
            print(f"  nprobe sweeps: {result.memory('sweeps')}")
        with phase(result, "clusters"):
            run_clusters(library, rows, args, result)
        print(f"  clusters: {result.cluster}; {result.memory('clusters')}")
        with phase(result, "duplicates"):
            run_duplicates(library, data, ids, args.dup_budget, result)
        print(f"  near duplicates: {result.duplicates}; {result.memory('duplicates')}")
    finally:
        library.close()


def print_full(result: SizeResult) -> None:
    full = result.full
    print(
        f"  index alone at {result.n:,} (what build_index makes, from memory): "
        f"{full['kind']} ({full['lists']} lists), built in {full['build_s']:.1f} s"
    )
    print(f"    search:                 {full['plain']}")
    print(f"    search, folder filter:  {full['filtered']}")
    print(f"    search, 1 FAISS thread: {full['single']}")
    print(
        f"    nearest() p50 estimate: {full['nearest_p50_ms']:.2f} ms (+ hits SQL measured); "
        f"filtered adds ~{full['filter_sql_ms']:.0f} ms of filter SQL (scaled by rows)"
    )
    if "sweep" in full:
        print_sweep("nprobe sweep:", full["sweep"])
        print_sweep("nprobe sweep, filtered:", full["sweep_a"])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary(results: list[SizeResult]) -> None:
    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} logical cores); {load_average()}")
    header = (
        f"{'photos':>9} {'written':>9} {'rows/s':>7} {'build s':>8} {'index':>10} "
        f"{'open s':>7} {'p50 ms':>7} {'p99 ms':>7} {'recall':>7} {'fp50 ms':>8} "
        f"{'fp99 ms':>8} {'frecall':>7} {'cluster s':>9} {'peak GB':>7}"
    )
    print(header)
    for r in results:
        index = f"{r.kind}/{r.lists}" if r.lists else r.kind
        cluster = f"{r.cluster_s:.1f}" if r.cluster_s is not None else "-"
        print(
            f"{r.n:>9,} {r.written:>9,} {r.written / r.write_s:>7,.0f} {r.build_s:>8.1f} "
            f"{index:>10} {r.open_s:>7.2f} {r.plain.p50_ms:>7.2f} {r.plain.p99_ms:>7.2f} "
            f"{r.plain.recall:>7.4f} {r.filtered.p50_ms:>8.2f} {r.filtered.p99_ms:>8.2f} "
            f"{r.filtered.recall:>7.4f} {cluster:>9} {r.peak / 1024**3:>7.2f}"
        )
    print("(f = with the folder filter under=/photos/a, 10% of the photos)")
    print("Peak RSS per phase (GB):")
    for r in results:
        phases = ", ".join(f"{p} {v / 1024**3:.2f}" for p, v in r.rss.items() if p != "all")
        print(f"  {r.n:>9,}: {phases}")
    print("Targets:")
    print("  query p50 < 20 ms at 1M with recall@10 >= 0.95: " + query_verdict(results))
    print("  clustering 100k < 60 s: " + cluster_verdict(results))


def query_verdict(results: list[SizeResult]) -> str:
    r = next((r for r in results if r.n == TARGET_SIZE), None)
    if r is None:
        return "not measured (1M not in --sizes)"
    if r.written == r.n:
        ok = r.plain.p50_ms < LATENCY_TARGET_MS and r.plain.recall >= RECALL_TARGET
        return f"{verdict(ok)} (p50 {r.plain.p50_ms:.2f} ms, recall@10 {r.plain.recall:.4f})"
    full = r.full
    p50, recall = full["nearest_p50_ms"], full["plain"].recall
    ok = p50 < LATENCY_TARGET_MS and recall >= RECALL_TARGET
    return (
        f"{verdict(ok)} (estimated: index alone at 1M + SQL measured at {r.written:,} rows: "
        f"p50 {p50:.2f} ms, recall@10 {recall:.4f}; the library itself: p50 "
        f"{r.plain.p50_ms:.2f} ms, recall {r.plain.recall:.4f})"
    )


def cluster_verdict(results: list[SizeResult]) -> str:
    r = next((r for r in results if r.written == CLUSTER_TARGET_SIZE), None)
    if r is None or r.cluster_s is None:
        return "not measured (no 100k library clustered)"
    return f"{verdict(r.cluster_s < CLUSTER_TARGET_S)} ({r.cluster})"


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    print(
        f"CPU: {cpu_name()} ({os.cpu_count()} logical cores); faiss {faiss.__version__}; "
        + load_average()
    )
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="vitsearch-explore-") as temp:
            results.append(measure_size(n, args, Path(temp)))
    summary(results)


if __name__ == "__main__":
    main()
