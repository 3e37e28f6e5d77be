"""The library schema's version and its ordered migrations, each in a transaction."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from vitsearch.errors import LibraryVersionError
from vitsearch.store.schema import SCHEMA_VERSION, Base, ClassifierRow
from vitsearch.store.sql import Sql

# Tables that lived in the library before derived results moved to their own cache file.
FORMER_DERIVED_TABLES = ("cluster_members", "clusters", "map_points")


def _create_derived_tables(conn) -> None:
    """Schema 2 made cluster and map tables; schema 6 moved them out again (a no-op now)."""


def _index_cluster_pages(conn) -> None:
    """Schema 3 indexed cluster pages; those tables live in the derived cache since 6."""


def _add_taught_labels(conn) -> None:
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(labels)")}
    if "source" not in columns:
        conn.exec_driver_sql("ALTER TABLE labels ADD COLUMN source VARCHAR")
    Base.metadata.create_all(conn, tables=[ClassifierRow.__table__])


def _add_phash(conn) -> None:
    """Photos indexed before get NULL: duplicates computes their hash when it needs it."""
    columns = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(images)")}
    if "phash" not in columns:
        conn.exec_driver_sql("ALTER TABLE images ADD COLUMN phash INTEGER")


def _move_out_derived(conn) -> None:
    """Clusters and map points are derived results: from schema 6 they live in the home's
    derived cache, which readers may write without touching the library (and every host
    of a shared library keeps its own)."""
    for table in FORMER_DERIVED_TABLES:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
    conn.exec_driver_sql("DELETE FROM meta WHERE key IN ('clusters', 'map')")


# Ordered migrations: version -> function(connection). Version 1 is the initial create_all.
MIGRATIONS: dict[int, Callable] = {
    2: _create_derived_tables,
    3: _index_cluster_pages,
    4: _add_taught_labels,
    5: _add_phash,
    6: _move_out_derived,
}


def schema_version(sql: Sql) -> int | None:
    found = sql.get_meta("schema_version")
    return int(found) if found else None


def ensure_schema(sql: Sql) -> None:
    """Create a new library, or bring an older one up to this vitsearch's schema (a writer's
    job; a newer one is refused). Every library gets an id, so a cache knows whose it is."""
    with sql.engine.begin() as conn:
        Base.metadata.create_all(conn)
    version = schema_version(sql)
    if version is None:
        sql.set_meta(schema_version=str(SCHEMA_VERSION), library_id=uuid.uuid4().hex)
        return
    check_not_newer(sql, version)
    for target in range(version + 1, SCHEMA_VERSION + 1):
        with sql.engine.begin() as conn:
            MIGRATIONS[target](conn)
        sql.set_meta(schema_version=str(target))
    if sql.get_meta("library_id") is None:
        sql.set_meta(library_id=uuid.uuid4().hex)


def check_not_newer(sql: Sql, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise LibraryVersionError(
            f"the library at {sql.path} was written by a newer vitsearch (schema {version}, "
            f"this one knows {SCHEMA_VERSION}); upgrade vitsearch"
        )
