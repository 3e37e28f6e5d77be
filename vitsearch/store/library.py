"""A library home: the database, its FAISS cache, derived results, the model, the writer lock.

:class:`Library` is the one door to a library's storage: its queries come from one mixin per
noun (photos, embeddings, labels, derived results), and its writes keep every copy of the data
in step (SQLite, then the FAISS cache, then the mark that the cache must be saved)."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from vitsearch.errors import LibraryLockedError, ModelMismatchError
from vitsearch.records import FailedEntry, Filters, ImageEntry, ModelInfo
from vitsearch.store.derived import DERIVED_NAME, DerivedCache, DerivedResults
from vitsearch.store.embeddings import EmbeddingRows
from vitsearch.store.labels import LabelRows
from vitsearch.store.lock import WriterLock, holder_pid
from vitsearch.store.migrations import check_not_newer, ensure_schema, schema_version
from vitsearch.store.photos import PhotoRows
from vitsearch.store.schema import SCHEMA_VERSION, Meta
from vitsearch.store.sql import Sql
from vitsearch.store.vectors import (
    VectorIndex,
    build_index,
    catch_up,
    open_vector_index,
    saved_kind,
    saved_state,
    wants_rebuild,
)

log = logging.getLogger(__name__)

DATABASE_NAME = "library.sqlite3"
ALLOWED_CACHE = 8  # filters remembered per reader
MARKS = ("last_commit_at", "vector_seq")  # meta rows every photo write changes
VECTORS_NAME = "vectors.faiss"


class Library(PhotoRows, EmbeddingRows, LabelRows, DerivedResults):
    """Open with :func:`open_library`. A writer holds the lock; readers never write the
    library file (their connections are read-only) but may write the derived cache beside it.

    A reader of a home with no library creates nothing: it reads an empty one, in memory,
    until a writer makes the file. A writer that made the library removes it again on close
    when it got no photo to keep (a first run that failed, an empty folder). A reader of a
    library from an older vitsearch, with no writer at work, upgrades its schema once.
    """

    def __init__(self, home: Path, writable: bool) -> None:
        self.home = home
        self.writable = writable
        self._new_home = not home.exists()
        self._lock = WriterLock(home).acquire() if writable else None
        path = home / DATABASE_NAME
        self._new = not path.exists()
        self._sql = self._connect()
        self._file = _file_id(path)
        self.derived = self._derived_cache()
        self._vectors: VectorIndex | None = None
        self._vectors_stamp: float | None = None
        self._allowed: dict[tuple, tuple[tuple, np.ndarray]] = {}
        self._vectors_dirty = False

    # -- what the noun mixins share -----------------------------------------------------

    @property
    def engine(self) -> Engine:
        return self._sql.engine

    def session(self) -> Session:
        return self._sql.session()

    @property
    def on_disk(self) -> bool:
        """Whether the home holds a library file (a reader of a new home reads none)."""
        return self._sql.path is not None

    @property
    def location(self) -> str:
        """Where the library lives, for messages: its home here, a URL for a server."""
        return str(self.home)

    @property
    def vectors_path(self) -> Path:
        return self.home / VECTORS_NAME

    def get_meta(self, key: str) -> str | None:
        return self._sql.get_meta(key)

    def set_meta(self, **values: str) -> None:
        self._sql.set_meta(**values)

    # -- the model ----------------------------------------------------------------------

    @property
    def model(self) -> ModelInfo | None:
        raw = self.get_meta("model")
        return ModelInfo(**json.loads(raw)) if raw else None

    def check_model(self, info: ModelInfo) -> None:
        """Refuse a model whose embeddings differ from the library's."""
        current = self.model
        if current is not None and (
            current.fingerprint != info.fingerprint or current.dim != info.dim
        ):
            raise _other_model(current, info.name, info.fingerprint)

    def check_source(self, name: str, source: str) -> None:
        """Refuse, before it loads, a checkpoint whose fingerprint (:attr:`ModelInfo.source`)
        is not that of the library's model; :meth:`check_model` checks the loaded one."""
        current = self.model
        if current is not None and current.source != source:
            raise _other_model(current, name, source)

    def adopt_model(self, info: ModelInfo, precision: str) -> None:
        """Record the model of a new library (or its new name), after :meth:`check_model`."""
        self.check_model(info)
        current = self.model
        if current is None or current.name != info.name:
            self.set_meta(**_model_meta(info, precision))
        if current is None:
            self._vectors = None  # it was opened before the library knew its dimension

    # a library whose every embedding another backend of its model can remake in place
    reembeds_in_place = True

    def reembed(self, info: ModelInfo, precision: str, entries: Sequence[ImageEntry]) -> None:
        """Every photo's embedding and labels made anew by another backend of the library's
        model (``entries``: all of them), and the model's record, in one transaction: the
        library never mixes the two. The FAISS cache is then rebuilt."""
        current = self.model
        if current is None:
            raise ValueError("reembed needs a library with a model: adopt_model records one")
        if current.source != info.source or current.dim != info.dim:
            raise _other_model(current, info.name, info.fingerprint)
        if len(entries) != self.embedding_count():
            raise ValueError("reembed takes every embedded photo of the library at once")
        self._write_rows(entries, (), meta=_model_meta(info, precision))
        self.rebuild_vectors()

    # -- writes: SQLite and the FAISS cache in step ------------------------------------

    def write_batch(
        self,
        entries: Sequence[ImageEntry],
        failures: Sequence[FailedEntry] = (),
        update_vectors: bool = True,
    ) -> list[int]:
        """Store embedded photos and failed files in one transaction; returns the photos' ids.
        ``update_vectors=False`` (bulk loads) leaves the FAISS cache to catch up from SQLite
        when it is next opened, instead of adding to it batch by batch."""
        ids = self._write_rows(entries, failures)
        if entries:
            if update_vectors:
                self.vectors.upsert(np.array(ids), np.stack([e.vector for e in entries]))
            self._vectors_dirty = True  # a loaded index catches up before it is saved
        return ids

    def delete(self, ids: Sequence[int]) -> None:
        """Photos gone from disk: their rows, labels and vectors."""
        ids = list(ids)
        if ids:
            self._delete_rows(ids)
            self.vectors.remove(np.array(ids))
            self._vectors_dirty = True

    def move(self, image_id: int, path: str, root_id: int, mtime_ns: int) -> None:
        """A renamed or moved file keeps its id and embedding."""
        self._move_row(image_id, path, root_id, mtime_ns)

    def move_tree(self, source: str, dest: str, root_id: int) -> int:
        """A file or folder renamed on disk: its rows follow, ids and embeddings kept."""
        return self._move_rows(source, dest, root_id)

    def forget_root(self, path: str) -> int:
        """Remove a folder given to ``index`` and every photo below it; how many went."""
        ids = self._root_image_ids(path)
        if ids is None:
            return 0
        self.delete(ids)
        self._delete_root(path)
        return len(ids)

    def rebuild_vectors(self) -> int:
        """Build the FAISS cache anew from SQLite (no model work); the vectors it holds."""
        self.vectors_path.unlink(missing_ok=True)
        self._vectors = None
        self._vectors_dirty = True
        return len(self.vectors)

    # -- the FAISS cache ----------------------------------------------------------------

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, loaded (and caught up with SQLite) on first use."""
        if self._vectors is None:
            info = self.model
            self._vectors_stamp = _mtime(self.vectors_path)
            self._vectors, changed = open_vector_index(
                self, self.vectors_path, info.dim if info else 1
            )
            self._vectors_dirty = changed
        return self._vectors

    def vector_count(self) -> int:
        """Vectors in the FAISS index, without loading it (3 GB at a million photos) when its
        file's sidecar shows it in step with SQLite; else the index is loaded and caught up."""
        if self._vectors is None:
            saved = saved_state(self.vectors_path)
            if saved is not None and saved == self.vector_state():
                return saved[1]
        return len(self.vectors)

    def allowed_ids(self, filters: Filters) -> np.ndarray:
        """Ids passing the folder/date filters, remembered until the embeddings change:
        a long-lived reader (the app) repeats the same filter on every query."""
        key = (filters.under, filters.after, filters.before)
        state = self.change_mark()
        cached = self._allowed.get(key)
        if cached is not None and cached[0] == state:
            return cached[1]
        ids = self.filtered_ids(filters)
        if len(self._allowed) >= ALLOWED_CACHE:
            self._allowed.pop(next(iter(self._allowed)))
        self._allowed[key] = (state, ids)
        return ids

    def change_mark(self) -> tuple[str | None, str | None]:
        """Differs after every commit that writes, moves or deletes photos: two rows of the
        meta table: counting the embeddings for this cost ~7 ms a query at a million photos."""
        with self.session() as s:
            found = dict(s.execute(select(Meta.key, Meta.value).where(Meta.key.in_(MARKS))).all())
        return found.get(MARKS[0]), found.get(MARKS[1])

    def refresh(self) -> None:
        """For long-lived readers (the UI): see what a writer committed since the last call.

        A FAISS file the writer replaced is reloaded (it may be a new kind); otherwise the
        index in memory is caught up from SQLite when the embeddings changed.
        """
        if not self.writable and _file_id(self.home / DATABASE_NAME) != self._file:
            self._reopen()
            return
        if self._vectors is None:
            return
        stamp = _mtime(self.vectors_path)
        if stamp != self._vectors_stamp:
            self._vectors_stamp = stamp
            if saved_kind(self.vectors_path) != (self._vectors.kind, self._vectors.trained_on):
                self._vectors = None  # a rebuilt index: reloaded, and caught up, on next use
                return
        if self.vector_state() != (self._vectors.seq, len(self._vectors)):
            catch_up(self._vectors, self)

    def save_vectors(self) -> None:
        """Write the FAISS file if it changed; only the writer does. A Ctrl-C meanwhile
        takes effect once the file is written: a run stopped there still leaves it whole."""
        with interrupts_deferred():
            self._save_vectors()

    def _save_vectors(self) -> None:
        if self.writable and self._vectors is not None and self._vectors_dirty:
            # An interrupt can fall between a commit and the in-memory add: check before saving.
            catch_up(self._vectors, self)
            if wants_rebuild(self._vectors):
                self._vectors = build_index(self, self._vectors.dim)
            self._vectors.save(self.vectors_path)
            self._vectors_dirty = False

    # -- opening and closing ------------------------------------------------------------

    def _connect(self) -> Sql:
        path = self.home / DATABASE_NAME
        if self.writable or not path.exists():
            sql = Sql(path if self.writable else None)
            ensure_schema(sql)
            return sql
        sql = Sql(path, read_only=True)
        version = schema_version(sql)
        check_not_newer(sql, version)
        if version != SCHEMA_VERSION:
            sql.close()
            self._upgrade(path)
            sql = Sql(path, read_only=True)
        return sql

    def _upgrade(self, path: Path) -> None:
        """A library from an older vitsearch, read before any writer opened it: upgraded
        once, under the writer lock, as its writer would (a writer holding the lock has
        upgraded it already: it does so when it opens)."""
        try:
            with WriterLock(self.home):
                sql = Sql(path)
                try:
                    ensure_schema(sql)
                finally:
                    sql.close()
        except LibraryLockedError:
            pass

    def _derived_cache(self) -> DerivedCache:
        library_id = self.get_meta("library_id") or ""
        return DerivedCache(self.home if self.on_disk else None, library_id)

    def close(self) -> None:
        unused = False
        try:
            unused = self._made_for_nothing()
            if not unused:
                self.save_vectors()
        finally:
            self._sql.close()
            self.derived.close()
            if unused:
                for pattern in (f"{DATABASE_NAME}*", f"{VECTORS_NAME}*", f"{DERIVED_NAME}*"):
                    for file in self.home.glob(pattern):  # -wal, sidecar...
                        file.unlink(missing_ok=True)
            if self._lock is not None:
                self._lock.release(remove=unused)
            if unused and self._new_home:
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    self.home.rmdir()

    def _made_for_nothing(self) -> bool:
        """Whether this writer created the library and it holds no photo, not even a failed
        one: nothing a next run needs, so no files to leave in the home."""
        if not (self.writable and self._new):
            return False
        counts = self.counts()
        return counts.images == 0 and counts.failed == 0

    def _reopen(self) -> None:
        """A reader: the library file appeared, or went (a writer's first run that stored
        nothing), or was made anew since it was opened: read what is there now."""
        self._sql.close()
        self.derived.close()
        self._file = _file_id(self.home / DATABASE_NAME)
        self._sql = self._connect()
        self.derived = self._derived_cache()
        self._vectors = None
        self._allowed.clear()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _model_meta(info: ModelInfo, precision: str) -> dict[str, str]:
    model = {
        "name": info.name,
        "fingerprint": info.fingerprint,
        "dim": info.dim,
        "preprocessing": info.preprocessing,
    }
    return {"model": json.dumps(model), "precision": precision}


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """SIGINT during the block is handled (by whatever handled it before) right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)
        if caught:
            handler = previous if callable(previous) else signal.default_int_handler
            if previous != signal.SIG_IGN:
                handler(signal.SIGINT, None)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def open_library(home: Path, write: bool = False, store: str | None = None) -> Library:
    """The library at ``home``, or with ``store`` (a postgresql:// URL) the one in that
    database, with ``home`` as this host's folder for thumbnails and derived results."""
    if store:
        from vitsearch.store.postgres import PgLibrary  # psycopg only for a server

        return PgLibrary(Path(home), writable=write, store=store)
    return Library(Path(home), writable=write)


def writer_pid(home: Path, store: str | None = None) -> int | None:
    """The pid of the process writing to the library at ``home`` (or in ``store``), if any."""
    if store:
        from vitsearch.store.postgres import pg_writer_pid

        return pg_writer_pid(store)
    return holder_pid(WriterLock(Path(home)).path)


def _other_model(current: ModelInfo, name: str, fingerprint: str) -> ModelMismatchError:
    return ModelMismatchError(
        f"this library was built with model {current.name} ({current.fingerprint}), "
        f"not {name} ({fingerprint}); use --model {current.name} or another --home"
    )
