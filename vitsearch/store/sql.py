"""The connection to a library database, its meta table and the SQL helpers every noun uses."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from vitsearch.errors import DiskFullError
from vitsearch.store.schema import Meta

BUSY_TIMEOUT_SECONDS = 30
SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, which Python has only from 3.11 on


class Sql:
    """One SQLite file (or, with ``path`` None, an empty library in memory). A reader's
    connections are read-only: it cannot change the file, whatever it runs."""

    def __init__(self, path: Path | None, read_only: bool = False) -> None:
        if path is not None and not read_only:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path: Path | str | None = path  # a server's: its URL as messages show it
        self.read_only = read_only and path is not None
        self.engine = _engine(path, self.read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return self._sessions()

    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(Meta.value).where(Meta.key == key))

    def set_meta(self, **values: str) -> None:
        with self.session() as s, s.begin():
            for key, value in values.items():
                s.merge(Meta(key=key, value=value))


def _engine(path: Path | None, read_only: bool) -> Engine:
    if path is None:  # every thread shares the one connection: it is the whole database
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    elif read_only:
        engine = create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true",
            connect_args={"timeout": BUSY_TIMEOUT_SECONDS},
        )
    else:
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_SECONDS})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        if not read_only:  # the writer made the file WAL; a reader could not change it
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "handle_error")
    def _disk_full(context) -> DiskFullError | None:
        # SQLite's "database or disk is full": the transaction rolled back, commits stand
        error = context.original_exception
        full = getattr(error, "sqlite_errorcode", None) == SQLITE_FULL
        if isinstance(error, sqlite3.Error) and full and path is not None:
            return DiskFullError(path.parent)
        return None

    return engine


def delete_where_in(s: Session, table, ids: list[int]) -> None:
    for chunk in chunks(ids, 500):
        s.execute(delete(table).where(table.image_id.in_(chunk)))


def touch(s: Session) -> None:
    """Record when the library last changed (``status`` shows it)."""
    s.merge(Meta(key="last_commit_at", value=repr(time.time())))


def upsert(table, example: dict, keys: list[str], dialect: str = "sqlite"):
    """INSERT .. ON CONFLICT (keys) DO UPDATE: an existing row keeps its id."""
    statement = (postgresql_insert if dialect == "postgresql" else sqlite_insert)(table)
    updates = {name: statement.excluded[name] for name in example if name not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def blob(vector) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
