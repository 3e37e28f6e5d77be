"""Copy a library between stores (a home's SQLite and PostgreSQL, either way) without
re-embedding: every row keeps its id, every vector its bytes and write number."""

from __future__ import annotations

import uuid

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import Connection

from vitsearch.errors import EmptyLibraryError, LibraryNotEmptyError
from vitsearch.records import CopySummary
from vitsearch.store.library import Library
from vitsearch.store.pgcopy import copy_rows
from vitsearch.store.schema import ClassifierRow, EmbeddingRow, ImageRow, LabelRow, Meta, Root

CHUNK = 2000
# In dependency order; each copied whole, ids included.
TABLES = (Root, ImageRow, EmbeddingRow, LabelRow, ClassifierRow)
# Tables whose ids are never reused (AUTOINCREMENT in SQLite, a sequence in PostgreSQL): the
# copy carries on from the source's highest id ever given, not from the highest left.
COUNTERS = (ImageRow, ClassifierRow, Root)
OWN_META = ("schema_version", "library_id")  # each library keeps its own
# Written by COPY into PostgreSQL: the large tables (write_batch's photos go in at 1,805 rows/s
# by COPY against 322 by executemany, bench_pgvector.py --copy-rate, no HNSW index: a copy's
# index is built once its rows are in). The rest by INSERT, types adapted by SQLAlchemy.
COPIED = (ImageRow, EmbeddingRow, LabelRow)


def copy_library(source: Library, dest: Library) -> CopySummary:
    """Copy everything in ``source`` into the empty library ``dest`` (both opened to write,
    so no writer changes either meanwhile), in one transaction of ``dest``. The copy gets a
    library id of its own: derived results (clusters, map) are recomputed for it."""
    info = source.model
    if info is None:
        raise EmptyLibraryError(f"the library at {source.location} is empty: nothing to copy")
    counts = dest.counts()
    if counts.images or counts.failed or dest.classifiers():
        raise LibraryNotEmptyError(
            f"the library at {dest.location} already holds photos; copy into an empty one "
            "(a new --home, or an empty database)"
        )
    copied: dict[str, int] = {}
    with source.engine.connect() as reading, dest.engine.begin() as writing:
        _copy_meta(reading, writing)
        for table in TABLES:
            copied[table.__tablename__] = _copy_table(reading, writing, table)
        for table in COUNTERS:
            _set_counter(writing, table, _counter(reading, table))
    dest.adopt_model(info, source.get_meta("precision") or "fp32")  # types pgvector's column
    if dest.engine.dialect.name == "sqlite":
        dest.rebuild_vectors()  # the FAISS cache, saved when ``dest`` closes
    return CopySummary(
        photos=copied["images"],
        vectors=copied["embeddings"],
        labels=copied["labels"],
        classifiers=copied["classifiers"],
        source=source.location,
        dest=dest.location,
    )


def _copy_meta(reading: Connection, writing: Connection) -> None:
    rows = [
        {"key": key, "value": value}
        for key, value in reading.execute(select(Meta.key, Meta.value))
        if key not in OWN_META
    ]
    writing.execute(Meta.__table__.delete().where(Meta.key.not_in(OWN_META)))
    if rows:
        writing.execute(insert(Meta), rows)
    writing.execute(
        Meta.__table__.update().where(Meta.key == "library_id").values(value=uuid.uuid4().hex)
    )


def _copy_table(reading: Connection, writing: Connection, table) -> int:
    """Every row of ``table``, in primary-key order, in chunks; how many."""
    columns = table.__table__.columns
    query = select(*columns).order_by(*table.__table__.primary_key.columns)
    copied = 0
    result = reading.execution_options(yield_per=CHUNK).execute(query)
    by_copy = writing.dialect.name == "postgresql" and table in COPIED
    for part in result.partitions(CHUNK):
        rows = [dict(row._mapping) for row in part]
        if by_copy:
            copy_rows(writing, table.__tablename__, rows)
        else:
            writing.execute(insert(table), rows)
        copied += len(part)
    return copied


def _counter(conn: Connection, table) -> int:
    """The highest id ``table`` ever gave (deleted rows' ids included where the database
    keeps that), at least its highest id now."""
    highest = conn.execute(select(func.max(table.id))).scalar() or 0
    name = table.__tablename__
    if conn.dialect.name == "postgresql":
        sequence = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": name})
        row = conn.execute(text(f"SELECT last_value, is_called FROM {sequence.scalar()}")).one()
        return max(highest, row[0] if row[1] else 0)
    if conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'sqlite_sequence'")).first():
        found = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = :t"), {"t": name})
        return max(highest, found.scalar() or 0)
    return highest


def _set_counter(conn: Connection, table, value: int) -> None:
    """Make ``table``'s next id ``value + 1``."""
    if value < 1:
        return
    name = table.__tablename__
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT setval(pg_get_serial_sequence(:t, 'id'), :v)"), {"t": name, "v": value}
        )
        return
    if not table.__table__.dialect_options["sqlite"]["autoincrement"]:
        return  # without AUTOINCREMENT (roots) SQLite's next id follows the largest there
    known = conn.execute(text("SELECT 1 FROM sqlite_sequence WHERE name = :t"), {"t": name})
    statement = (
        "UPDATE sqlite_sequence SET seq = :v WHERE name = :t"
        if known.first()
        else "INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :v)"
    )
    conn.execute(text(statement), {"t": name, "v": value})
