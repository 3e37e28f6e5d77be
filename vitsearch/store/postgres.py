"""A library kept in PostgreSQL (``--store postgresql://user@host/db``), shared by many hosts.

The same tables and noun modules as the embedded library (``schema.py``, ``photos.py``,
``embeddings.py``, ``labels.py``), the same version table and migrations. What differs:

- The vectors are the ``embeddings.vector`` column itself, pgvector's ``vector(dim)`` (typed
  when the library learns its model's dimension) with an HNSW index (``vector_ip_ops``: the
  vectors are unit length, so inner product is cosine). There is no cache to save or catch up:
  a reader on any host sees a commit at once. A search runs in SQL with the folder/date filter
  in the same query, ordered by the vector distance (``hnsw.ef_search`` set per query, grown
  with the library's size, and an iterative index scan when a filter leaves the first
  candidates short).
- Near-duplicate pairs need a range search, which HNSW has not: they come from an exact
  in-memory FAISS index of the vectors, built on this host when duplicates are first asked for
  (what the embedded library keeps on disk).
- One writer per library is a session-level advisory lock, held on its own connection for
  the writer's life. The server releases it when that connection ends, so a writer that died
  (even by SIGKILL, or with its host) frees the library; a second writer is refused with the
  holder's host and pid, read from the lock connection's ``application_name``.
- Thumbnails, exports and the derived cache (clusters, map) stay in each host's ``--home``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Sequence

import numpy as np
from sqlalchemy import BigInteger, Float, bindparam, cast, create_engine, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import sessionmaker
from sqlalchemy.pool import NullPool
from sqlalchemy.sql import any_

from vitsearch.errors import ConfigError, LibraryLockedError, StoreUnavailableError
from vitsearch.records import FailedEntry, Filters, ImageEntry, ModelInfo
from vitsearch.store.columns import EmbeddingBytes, PgVector
from vitsearch.store.library import Library
from vitsearch.store.migrations import check_not_newer, ensure_schema, schema_version
from vitsearch.store.pgcopy import copy_labels, copy_vectors, upsert_images
from vitsearch.store.photos import _image_values, filter_conditions
from vitsearch.store.schema import SCHEMA_VERSION, EmbeddingRow, ImageRow, LabelRow
from vitsearch.store.sql import Sql, blob, delete_where_in, touch
from vitsearch.store.vectors import VectorIndex, build_index, catch_up

log = logging.getLogger(__name__)

LOCK_KEY = 0x76697473  # "vits": the advisory lock of the one writer (one library per database)
WRITER_APP = "vitsearch writer"  # application_name prefix of the lock's connection
HNSW_INDEX = "ix_embeddings_vector_hnsw"
HNSW_M = 16  # pgvector's default graph degree
# The build-time candidate list: twice pgvector's default of 64. On bench_scale.py's photo-like
# vectors at 1M photos, 64 held recall@10 at 0.95 unfiltered and 0.93 under a 10% folder
# filter even at ef_search 800; 128 reaches 0.995 and 0.994 at ef_search 200, for
# twice the build time. The curves are in docs/benchmarks.md, "FAISS beside pgvector".
HNSW_EF_CONSTRUCTION = 128
# Candidates a query keeps (pgvector's hnsw.ef_search, at least k) grow with the library, from
# the same curves: the graph of 128 kept recall@10 >= 0.99 at one candidate per 5,000 photos at
# the sizes measured (64 at 100k: 0.995; 200 at 1M: 0.995).
EF_SEARCH_MIN = 64
PHOTOS_PER_CANDIDATE = 5000
EF_SEARCH_MAX = 1000  # pgvector's limit
GRAPH_OPTIONS = f"m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION}"
CONNECT_TIMEOUT_SECONDS = 10
PLANS = {"auto": (), "index": ("enable_sort",), "exact": ("enable_indexscan",)}


def ef_search_for(photos: int) -> int:
    """pgvector's ``hnsw.ef_search`` for a library of ``photos`` vectors."""
    return min(EF_SEARCH_MAX, max(EF_SEARCH_MIN, math.ceil(photos / PHOTOS_PER_CANDIDATE)))


def pg_url(store: str) -> URL:
    """A SQLAlchemy URL for a ``postgresql://`` store, on the psycopg (3) driver."""
    try:
        url = make_url(store)
    except ArgumentError:
        raise ConfigError(f"{store!r} is not a database URL: postgresql://user@host/db") from None
    if url.get_backend_name() != "postgresql":
        raise ConfigError(f"the store must be a postgresql:// URL, not {shown(url)}")
    return url.set(drivername="postgresql+psycopg")


def shown(url: URL | str) -> str:
    """The URL without its password, for messages."""
    url = make_url(url) if isinstance(url, str) else url
    url = url.set(drivername=url.get_backend_name())
    if not url.password:  # "user:@host": no password to hide
        url = url._replace(password=None)  # URL is a NamedTuple; set() reads None as "keep"
    return url.render_as_string(hide_password=True)


def pg_engine(url: URL, read_only: bool = False, app: str = "vitsearch", **kwargs) -> Engine:
    """An engine on the server; a reader's transactions are read-only (it cannot write the
    library, whatever it runs)."""
    args: dict = {"application_name": app[:63], "connect_timeout": CONNECT_TIMEOUT_SECONDS}
    if read_only:
        args["options"] = "-c default_transaction_read_only=on"
    try:
        return create_engine(url, connect_args=args, pool_pre_ping=True, **kwargs)
    except ModuleNotFoundError:
        raise ConfigError(
            "a PostgreSQL library needs psycopg: pip install 'vitsearch[server]'"
        ) from None


class PgSql(Sql):
    """The library database on a PostgreSQL server: ``Sql``'s sessions and meta table."""

    def __init__(self, url: URL, read_only: bool = False) -> None:
        self.path = shown(url)  # what messages name (check_not_newer says "the library at ...")
        self.read_only = read_only
        self.engine = pg_engine(url, read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._check_reachable()

    def _check_reachable(self) -> None:
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except DBAPIError as exc:
            self.engine.dispose()
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise StoreUnavailableError(
                f"cannot open the library database {self.path}: {reason}; check --store "
                "(VITSEARCH_STORE) and that the server runs"
            ) from None

    def has_schema(self) -> bool:
        with self.engine.connect() as conn:
            return bool(conn.exec_driver_sql("SELECT to_regclass('meta') IS NOT NULL").scalar())


class AdvisoryLock:
    """The writer lock: ``pg_try_advisory_lock`` on a connection of its own, held open (in
    autocommit, so it never idles in a transaction) until :meth:`release`."""

    def __init__(self, url: URL) -> None:
        self.url = url
        self.name = f"{WRITER_APP} {os.getpid()}@{socket.gethostname()}"[:63]
        self._engine: Engine | None = None
        self._conn: Connection | None = None

    def acquire(self) -> AdvisoryLock:
        engine = pg_engine(self.url, app=self.name, poolclass=NullPool)
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            engine.dispose()
            raise StoreUnavailableError(
                f"cannot open the library database {shown(self.url)}: {exc.orig}; "
                "check --store (VITSEARCH_STORE) and that the server runs"
            ) from None
        got = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": LOCK_KEY}).scalar()
        if not got:
            conn.close()
            engine.dispose()
            holder = lock_holder(conn_url=self.url)
            who = f"pid {holder[0]} on {holder[1]}" if holder else "pid ?"
            raise LibraryLockedError(
                f"another vitsearch process ({who}) is writing to this library; "
                "wait for it to finish or stop it"
            )
        self._engine, self._conn = engine, conn
        return self

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
            except DBAPIError:
                pass  # the connection is gone: so is the lock
            finally:
                self._conn.close()
                if self._engine is not None:  # set with the connection
                    self._engine.dispose()
                self._conn = self._engine = None

    def __enter__(self) -> AdvisoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


HOLDER_QUERY = text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = :key "
    "AND l.objsubid = 1 AND l.database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database())"
)


def lock_holder(conn_url: URL) -> tuple[int, str] | None:
    """(pid, host) of the writer holding the library's lock, or None when nobody does."""
    engine = pg_engine(conn_url, app="vitsearch", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            names = [row[0] or "" for row in conn.execute(HOLDER_QUERY, {"key": LOCK_KEY})]
    except DBAPIError:
        return None
    finally:
        engine.dispose()
    if not names:
        return None
    found = re.fullmatch(rf"{WRITER_APP} (\d+)@(.*)", names[0])
    return (int(found.group(1)), found.group(2)) if found else (0, "another host")


class FilteredIds:
    """The photos passing folder/date filters, kept as SQL: a search applies the conditions
    in its own query; they are counted or listed only when asked."""

    def __init__(self, library: PgLibrary, filters: Filters) -> None:
        self.library = library
        self.filters = filters
        self._count: int | None = None

    def conditions(self) -> list:
        return filter_conditions(self.filters)

    def __len__(self) -> int:
        if self._count is None:
            self._count = len(self.library.filtered_ids(self.filters))
        return self._count

    def tolist(self) -> list[int]:
        return self.library.filtered_ids(self.filters).tolist()


class PgVectors:
    """The ``VectorIndex`` calls search and duplicates make, answered by PostgreSQL."""

    kind = "hnsw"

    def __init__(self, library: PgLibrary, dim: int) -> None:
        self.library = library
        self.dim = dim
        self.ef_search: int | None = None  # None: by the library's size (ef_search_for)
        self._sized: int | None = None
        self._exact: VectorIndex | None = None

    def __len__(self) -> int:
        return self.library.embedding_count()

    def ids(self) -> np.ndarray:
        return self.library.embedding_ids()

    def candidates(self, k: int) -> int:
        """The ``hnsw.ef_search`` a query for k photos runs with."""
        if self.ef_search is not None:
            return max(self.ef_search, k)
        if self._sized is None:
            self._sized = ef_search_for(self.library.estimated_vectors())
        return max(self._sized, k)

    def search(
        self,
        query: np.ndarray,
        k: int,
        allowed: FilteredIds | np.ndarray | None = None,
        plan: str = "auto",
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the k nearest, best first; only ``allowed`` ids when given, the
        filter in the same SQL query as the vector order. ``plan``: "auto" leaves the choice
        to the server's planner (a narrow filter is answered exactly, from the path index);
        "index" makes it walk the HNSW graph, "exact" compare every row (what recall checks
        and benchmarks/bench_pgvector.py compare)."""
        if k < 1:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        vector = bindparam("query", blob(query), type_=EmbeddingBytes)
        distance = EmbeddingRow.vector.op("<#>", return_type=Float)(cast(vector, PgVector()))
        statement = select(EmbeddingRow.image_id, distance).order_by(distance).limit(k)
        if isinstance(allowed, FilteredIds):
            statement = statement.join(ImageRow, ImageRow.id == EmbeddingRow.image_id)
            statement = statement.where(*allowed.conditions())
        elif allowed is not None:
            wanted = bindparam("allowed", [int(i) for i in allowed], type_=ARRAY(BigInteger))
            statement = statement.where(EmbeddingRow.image_id == any_(wanted))
        with self.library.engine.begin() as conn:
            for setting in PLANS[plan]:
                conn.exec_driver_sql(f"SET LOCAL {setting} = off")
            conn.exec_driver_sql(f"SET LOCAL hnsw.ef_search = {int(self.candidates(k))}")
            if allowed is not None:  # a filter that rejects the first candidates scans on
                conn.exec_driver_sql("SET LOCAL hnsw.iterative_scan = relaxed_order")
            rows = conn.execute(statement).all()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        scores = -np.array([r[1] for r in rows], dtype=np.float32)  # <#> is the negated product
        order = np.argsort(-scores, kind="stable")  # relaxed order: nearly sorted already
        return ids[order], scores[order]

    def pairs_above(
        self, ids: np.ndarray, vectors: np.ndarray, threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, score) for every b with cosine >= threshold to a query a, with a < b: a
        range search, which HNSW lacks, so it runs on an in-memory FAISS index of this host
        (the embedded library's kind for this size), built on first use."""
        return self.exact_index().pairs_above(ids, vectors, threshold)

    def exact_index(self) -> VectorIndex:
        if self._exact is None:
            self._exact = build_index(self.library, self.dim)
        return self._exact

    def refresh(self) -> None:
        """Bring the in-memory index (if any) in step with the rows, and ef_search with the
        library's size."""
        self._sized = None
        if self._exact is not None:
            state = self.library.vector_state()
            if state != (self._exact.seq, len(self._exact)):
                catch_up(self._exact, self.library)


class PgLibrary(Library):
    """A :class:`Library` whose rows, vectors and writer lock live in PostgreSQL; ``home`` is
    this host's folder (thumbnails, exports, the derived cache). Open with
    ``open_library(home, write, store=URL)``."""

    def __init__(self, home, writable: bool, store: str) -> None:
        self.home = home
        self.writable = writable
        self.url = pg_url(store)
        # PgLibrary keeps its lock and vectors in the server and overrides every Library method
        # that uses them (close, vectors, allowed_ids, _connect), hence the ignores below
        self._lock = AdvisoryLock(self.url).acquire() if writable else None  # type: ignore[assignment]
        try:
            self._sql = self._connect()
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        self.derived = self._derived_cache()
        self._vectors: PgVectors | None = None  # type: ignore[assignment]
        self._allowed: dict = {}
        self._vectors_dirty = False
        info = self.model
        if writable and info is not None:
            self._type_vectors(info.dim)

    @property
    def on_disk(self) -> bool:
        return True

    @property
    def location(self) -> str:
        return shown(self.url)

    # -- the vectors: rows of the library, searched by the server ------------------------

    @property
    def vectors(self) -> PgVectors:  # type: ignore[override]
        if self._vectors is None:
            info = self.model
            self._vectors = PgVectors(self, info.dim if info else 1)
        return self._vectors

    def vector_count(self) -> int:
        return self.embedding_count()

    def estimated_vectors(self) -> int:
        """The server's estimate of the embeddings rows (``pg_class.reltuples``, kept by
        ANALYZE, autovacuum and index builds; free to read, where a count scans the table),
        counted while it has none."""
        with self.engine.connect() as conn:
            estimate = conn.exec_driver_sql(
                "SELECT reltuples FROM pg_class WHERE oid = 'embeddings'::regclass"
            ).scalar()
        return int(estimate) if estimate is not None and estimate >= 0 else self.embedding_count()

    def allowed_ids(self, filters: Filters) -> FilteredIds:  # type: ignore[override]
        return FilteredIds(self, filters)

    # its vectors are typed columns written by COPY: a library here keeps its first backend
    reembeds_in_place = False

    def adopt_model(self, info: ModelInfo, precision: str) -> None:
        super().adopt_model(info, precision)
        self._type_vectors(info.dim)

    def write_batch(
        self,
        entries: Sequence[ImageEntry],
        failures: Sequence[FailedEntry] = (),
        update_vectors: bool = True,
    ) -> list[int]:
        """Store embedded photos and failed files in one transaction: the vectors are rows
        (and the HNSW index is the server's), so there is nothing else to keep in step."""
        return self._copy_rows(entries, failures)

    def delete(self, ids: Sequence[int]) -> None:
        ids = list(ids)
        if ids:
            self._delete_rows(ids)

    def _copy_rows(
        self, entries: Sequence[ImageEntry], failures: Sequence[FailedEntry]
    ) -> list[int]:
        """``_write_rows`` by COPY (``store/pgcopy.py``): the same rows, in a few statements
        per batch whatever its size. A photo written again gets a new vector and labels; a
        failed file keeps the row's id and loses both."""
        now = time.time()
        with self.session() as s, s.begin():
            touch(s)
            items: list[ImageEntry | FailedEntry] = [*entries, *failures]
            found = upsert_images(s, [_image_values(item, now) for item in items])
            ids = [found[e.path] for e in entries]
            # one writer holds the lock: deleting then inserting, in this transaction, is
            # the upsert by image_id, with no staging table for the vectors
            delete_where_in(s, LabelRow, list(found.values()))
            delete_where_in(s, EmbeddingRow, list(found.values()))
            if entries:
                vectors = np.stack([e.vector for e in entries])
                copy_vectors(s, ids, vectors, self._next_seq(s, len(entries)))
                copy_labels(s, self._label_rows(s, ids, [e.labels for e in entries]))
            return ids

    def rebuild_vectors(self) -> int:
        """Rebuild the HNSW index from the rows; the vectors it holds."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            if conn.exec_driver_sql(f"SELECT to_regclass('{HNSW_INDEX}')").scalar():
                conn.exec_driver_sql(f"REINDEX INDEX {HNSW_INDEX}")
        self._vectors = None
        return self.embedding_count()

    def refresh(self) -> None:
        """Commits are visible at once; only this host's duplicate index (and the size its
        ef_search follows) may need catching up."""
        if self._vectors is not None:
            self._vectors.refresh()

    def save_vectors(self) -> None:
        """Nothing to save: the vectors were committed with their rows."""

    def _type_vectors(self, dim: int) -> None:
        """Make the embeddings column ``vector(dim)`` and give it its HNSW index (once)."""
        typed = (
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'embeddings'::regclass AND attname = 'vector'"
        )
        with self.engine.begin() as conn:
            if conn.exec_driver_sql(typed).scalar() != f"vector({dim})":
                alter = f"ALTER TABLE embeddings ALTER COLUMN vector TYPE vector({dim})"
                conn.exec_driver_sql(alter)
            if conn.exec_driver_sql(f"SELECT to_regclass('{HNSW_INDEX}')").scalar():
                return  # (CREATE INDEX IF NOT EXISTS would still lock the table to find out)
            conn.exec_driver_sql(
                f"CREATE INDEX IF NOT EXISTS {HNSW_INDEX} ON embeddings USING hnsw "
                f"(vector vector_ip_ops) WITH ({GRAPH_OPTIONS})"
            )

    # -- opening and closing ------------------------------------------------------------

    def _connect(self) -> PgSql:
        if self.writable:
            sql = PgSql(self.url)
            _create_schema(sql)
            return sql
        sql = PgSql(self.url, read_only=True)
        version = schema_version(sql) if sql.has_schema() else None
        check_not_newer(sql, version)
        if version != SCHEMA_VERSION:
            self._upgrade()
        return sql

    def _upgrade(self) -> None:  # type: ignore[override]  # called by this class's _connect only
        """A database with no library yet, or one from an older vitsearch, read before any
        writer opened it: made or upgraded once, under the writer lock, as its writer would."""
        try:
            with AdvisoryLock(self.url):
                sql = PgSql(self.url)
                try:
                    _create_schema(sql)
                finally:
                    sql.close()
        except LibraryLockedError:
            pass  # the writer holding it made or upgraded the schema when it opened

    def close(self) -> None:
        try:
            self._sql.close()
            self.derived.close()
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None


def _create_schema(sql: PgSql) -> None:
    """pgvector, then the library's tables and version (``migrations.ensure_schema``)."""
    with sql.engine.begin() as conn:
        if not conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'vector'").first():
            try:
                conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS vector")
            except DBAPIError as exc:
                raise StoreUnavailableError(
                    f"the database {sql.path} has no pgvector and this user may not add it "
                    f"({exc.orig}); ask its owner to run: CREATE EXTENSION vector"
                ) from None
    ensure_schema(sql)


def pg_writer_pid(store: str) -> int | None:
    """The pid of the process writing to the PostgreSQL library ``store`` (on any host)."""
    holder = lock_holder(pg_url(store))
    return holder[0] if holder else None
