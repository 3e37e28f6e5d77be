"""A library home: the database, its FAISS cache, the model it was built with, the writer lock."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from vitsearch.errors import ModelMismatchError
from vitsearch.records import Filters, ModelInfo
from vitsearch.store.database import Database
from vitsearch.store.lock import WriterLock, holder_pid
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
VECTORS_NAME = "vectors.faiss"


class Library:
    """Open with :func:`open_library`. Readers never write; a writer holds the lock.

    A reader of a home with no library creates nothing: it reads an empty one, in memory,
    until a writer makes the file. A writer that made the library removes it again on close
    when it got no photo to keep (a first run that failed, an empty folder).
    """

    def __init__(self, home: Path, writable: bool) -> None:
        self.home = home
        self.writable = writable
        self._new_home = not home.exists()
        self._lock = WriterLock(home).acquire() if writable else None
        path = home / DATABASE_NAME
        self._new = not path.exists()
        self.db = Database(path if writable or not self._new else None)
        self._file = _file_id(path)
        self._vectors: VectorIndex | None = None
        self._vectors_stamp: float | None = None
        self._allowed: dict[tuple, tuple[tuple[int, int], np.ndarray]] = {}
        self._vectors_dirty = False

    @property
    def on_disk(self) -> bool:
        """Whether the home holds a library file (a reader of a new home reads none)."""
        return self.db.path is not None

    @property
    def vectors_path(self) -> Path:
        return self.home / VECTORS_NAME

    @property
    def model(self) -> ModelInfo | None:
        return self.db.model_info()

    @property
    def vectors(self) -> VectorIndex:
        """The FAISS index, loaded (and caught up with SQLite) on first use."""
        if self._vectors is None:
            info = self.model
            self._vectors_stamp = _mtime(self.vectors_path)
            self._vectors, changed = open_vector_index(
                self.db, self.vectors_path, info.dim if info else 1
            )
            self._vectors_dirty = changed
        return self._vectors

    def vector_count(self) -> int:
        """Vectors in the FAISS index, without loading it (3 GB at a million photos) when its
        file's sidecar shows it in step with SQLite; else the index is loaded and caught up."""
        if self._vectors is None:
            saved = saved_state(self.vectors_path)
            if saved is not None and saved == self.db.vector_state():
                return saved[1]
        return len(self.vectors)

    def allowed_ids(self, filters: Filters) -> np.ndarray:
        """Ids passing the folder/date filters, remembered until the embeddings change:
        a long-lived reader (the app) repeats the same filter on every query."""
        key = (filters.under, filters.after, filters.before)
        state = self.db.vector_state()
        cached = self._allowed.get(key)
        if cached is not None and cached[0] == state:
            return cached[1]
        ids = self.db.filtered_ids(filters)
        if len(self._allowed) >= ALLOWED_CACHE:
            self._allowed.pop(next(iter(self._allowed)))
        self._allowed[key] = (state, ids)
        return ids

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
        if self.db.vector_state() != (self._vectors.seq, len(self._vectors)):
            catch_up(self._vectors, self.db)

    def check_model(self, info: ModelInfo) -> None:
        """Refuse a model whose embeddings differ from the library's."""
        current = self.model
        if current is not None and (
            current.fingerprint != info.fingerprint or current.dim != info.dim
        ):
            raise ModelMismatchError(
                f"this library was built with model {current.name} ({current.fingerprint}), "
                f"not {info.name} ({info.fingerprint}); "
                f"use --model {current.name} or another --home"
            )

    def adopt_model(self, info: ModelInfo, precision: str) -> None:
        """Record the model of a new library (or its new name), after :meth:`check_model`."""
        self.check_model(info)
        current = self.model
        if current is None or current.name != info.name:
            self.db.record_model(info, precision)
        if current is None:
            self._vectors = None  # it was opened before the library knew its dimension

    def mark_vectors_changed(self) -> None:
        self._vectors_dirty = True

    def save_vectors(self) -> None:
        """Write the FAISS file if it changed; only the writer does. A Ctrl-C meanwhile
        takes effect once the file is written: a run stopped there still leaves it whole."""
        with interrupts_deferred():
            self._save_vectors()

    def _save_vectors(self) -> None:
        if self.writable and self._vectors is not None and self._vectors_dirty:
            # An interrupt can fall between a commit and the in-memory add: check before saving.
            catch_up(self._vectors, self.db)
            if wants_rebuild(self._vectors):
                self._vectors = build_index(self.db, self._vectors.dim)
            self._vectors.save(self.vectors_path)
            self._vectors_dirty = False

    def close(self) -> None:
        unused = False
        try:
            unused = self._made_for_nothing()
            if not unused:
                self.save_vectors()
        finally:
            self.db.close()
            if unused:
                for pattern in (f"{DATABASE_NAME}*", f"{VECTORS_NAME}*"):  # -wal, sidecar...
                    for file in self.home.glob(pattern):
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
        counts = self.db.counts()
        return counts.images == 0 and counts.failed == 0

    def _reopen(self) -> None:
        """A reader: the library file appeared, or went (a writer's first run that stored
        nothing), or was made anew since it was opened: read what is there now."""
        path = self.home / DATABASE_NAME
        self.db.close()
        self._file = _file_id(path)
        self.db = Database(path if self._file is not None else None)
        self._vectors = None
        self._allowed.clear()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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


def open_library(home: Path, write: bool = False) -> Library:
    return Library(Path(home), writable=write)


def writer_pid(home: Path) -> int | None:
    """The pid of the process writing to the library at ``home``, if any."""
    return holder_pid(WriterLock(Path(home)).path)
