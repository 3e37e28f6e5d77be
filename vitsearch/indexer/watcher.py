"""Following folders: watchdog events only *schedule* work; ``Indexer.reconcile`` does it.

Events mark paths dirty. A path is handed to the indexer once it has stopped changing for
``quiet_seconds`` (so a photo still being copied is never read half-written); everything that
settled in the same tick goes through one reconcile, so a burst of thousands of files is
embedded in full batches. Renames and folder moves reported by the OS are applied directly as
path updates (no hashing, no model), and a periodic full reconcile repairs anything missed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from vitsearch.indexer.reconcile import Indexer, Summary
from vitsearch.photos.files import FileStat, is_temporary_name

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25


@dataclass
class _Pending:
    """A dirty path and the stat it had when last looked at."""

    stat: tuple[int, int] | None
    since: float


@dataclass
class WatchState:
    """What happened while watching; read by tests and the status line."""

    reconciles: int = 0
    last_summary: Summary | None = None
    totals: Summary = field(default_factory=Summary)


class _EventCollector(FileSystemEventHandler):
    """Runs on watchdog's thread: records paths and moves, does no I/O of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty: set[str] = set()
        self._moves: list[tuple[str, str]] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory and event.event_type == "modified":
            return  # its entries report their own events
        with self._lock:
            if event.event_type == "moved":
                self._moves.append((_text(event.src_path), _text(event.dest_path)))
                self._dirty.add(_text(event.dest_path))
            self._dirty.add(_text(event.src_path))

    def take(self) -> tuple[set[str], list[tuple[str, str]]]:
        with self._lock:
            dirty, moves = self._dirty, self._moves
            self._dirty, self._moves = set(), []
        return dirty, moves


class Watcher:
    """Keeps a library in step with ``roots`` until :meth:`stop` is called."""

    def __init__(
        self,
        indexer: Indexer,
        roots: Sequence[Path],
        quiet_seconds: float = 2.0,
        rescan_seconds: float = 300.0,
        save_seconds: float = 300.0,
    ) -> None:
        self.indexer = indexer
        self.roots = [Path(root).expanduser().absolute() for root in roots]
        self.quiet_seconds = quiet_seconds
        self.rescan_seconds = rescan_seconds
        self.save_seconds = save_seconds
        self.state = WatchState()
        self._stopping = threading.Event()
        self._collector = _EventCollector()
        self._pending: dict[str, _Pending] = {}
        self._watched: set[Path] = set()
        indexer.hold = self._still_changing

    def stop(self) -> None:
        """Finish the batch in hand, commit, write FAISS, return from :meth:`run`."""
        self._stopping.set()
        self.indexer.stop.set()

    def run(self) -> WatchState:
        observer = Observer()
        self._observe(observer)
        observer.start()
        try:
            self._reconcile(None)  # catch up with whatever changed while we were not running
            self._loop(observer)
        finally:
            observer.stop()
            observer.join(timeout=10)
            self.indexer.library.save_vectors()
        return self.state

    def _loop(self, observer: BaseObserver) -> None:
        last_rescan = last_save = time.monotonic()
        while not self._stopping.wait(TICK_SECONDS):
            self._take_events()
            ready = self._settled(time.monotonic())
            if ready:
                self._reconcile(ready)
            now = time.monotonic()
            if now - last_rescan >= self.rescan_seconds:
                self._observe(observer)  # a drive plugged back in
                self._reconcile(None)
                last_rescan = time.monotonic()
            if now - last_save >= self.save_seconds:
                self.indexer.library.save_vectors()
                last_save = now

    def _observe(self, observer: BaseObserver) -> None:
        for root in self.roots:
            if root.is_dir() and root not in self._watched:
                try:
                    observer.schedule(self._collector, str(root), recursive=True)
                except OSError as exc:  # e.g. the inotify watch limit on a huge tree
                    log.warning(
                        "cannot follow events under %s (%s); relying on a full walk every %.0fs",
                        root,
                        exc,
                        self.rescan_seconds,
                    )
                self._watched.add(root)

    def _take_events(self) -> None:
        dirty, moves = self._collector.take()
        for source, dest in moves:
            self._apply_move(source, dest)
        now = time.monotonic()
        for path in dirty:
            if _ignored(path):
                continue
            self._pending[path] = _Pending(_stat(path), now)

    def _apply_move(self, source: str, dest: str) -> None:
        """The OS told us of a rename: update paths now, the reconcile of ``dest`` confirms it."""
        root = self._root_of(dest)
        if root is None or self._root_of(source) is None or _ignored(dest):
            return  # the reconcile of ``source`` then sees it gone
        db = self.indexer.library
        moved = db.move_tree(source, dest, db.root_id(str(root)))
        if moved:
            log.info("moved %s -> %s (%d photos)", source, dest, moved)
            self.state.totals.moved += moved

    def _still_changing(self, stat: FileStat) -> bool:
        """A file modified within the quiet time (or awaiting it) waits for a later pass."""
        if stat.path in self._pending:
            return True
        if time.time_ns() - stat.mtime_ns < self.quiet_seconds * 1e9:
            self._pending[stat.path] = _Pending((stat.size, stat.mtime_ns), time.monotonic())
            return True
        return False

    def _settled(self, now: float) -> list[Path]:
        """Paths that have not changed for ``quiet_seconds``; the others stay pending."""
        ready = []
        for path, pending in list(self._pending.items()):
            current = _stat(path)
            if current != pending.stat:
                self._pending[path] = _Pending(current, now)
            elif now - pending.since >= self.quiet_seconds:
                ready.append(Path(path))
                del self._pending[path]
        return ready

    def _reconcile(self, changed: list[Path] | None) -> None:
        summary = self.indexer.reconcile(self.roots, changed=changed, save=changed is None)
        self.state.reconciles += 1
        self.state.last_summary = summary
        totals = self.state.totals
        for name in ("new", "updated", "moved", "removed", "failed", "embedded"):
            setattr(totals, name, getattr(totals, name) + getattr(summary, name))
        if summary.new or summary.updated or summary.moved or summary.removed or summary.failed:
            log.info(summary.line())

    def _root_of(self, path: str) -> Path | None:
        candidate = Path(path)
        matches = [r for r in self.roots if candidate == r or r in candidate.parents]
        return max(matches, key=lambda r: len(r.parts)) if matches else None


def _ignored(path: str) -> bool:
    """Hidden, temporary and partial names are never looked at (the walk skips them too)."""
    return is_temporary_name(os.path.basename(path))


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _text(path: str | bytes) -> str:
    return os.fsdecode(path)
