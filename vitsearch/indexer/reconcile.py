"""``reconcile``: bring the library in step with folders. ``index`` and the watcher both call it.

Decoding runs in a thread pool ahead of the model; each batch is committed in one
transaction, so a run killed at any moment leaves a consistent library and the next run
resumes where it stopped.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vitsearch.config import available_cores
from vitsearch.errors import ImageDecodeError
from vitsearch.indexer.plan import Plan, make_plan
from vitsearch.labels.classifier import LinearClassifier, custom_labels_for, load_classifiers
from vitsearch.model.features import ImageEmbedder
from vitsearch.photos.decode import Photo, read_photo
from vitsearch.photos.files import (
    FileStat,
    image_extensions,
    is_photo_name,
    is_temporary_name,
    scan,
)
from vitsearch.photos.phash import photo_hash
from vitsearch.records import FailedEntry, ImageEntry, StoredFile, counted
from vitsearch.store import Library

log = logging.getLogger(__name__)


@dataclass
class Summary:
    new: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    failed: int = 0
    reused: int = 0  # copies whose embedding came from an identical indexed file
    unchanged: int = 0
    embedded: int = 0  # images that went through the model
    offline: tuple[str, ...] = ()
    seconds: float = 0.0
    setup_seconds: float = 0.0  # of ``seconds``: loading the model (and timing backends), once
    interrupted: bool = False
    where: str = ""  # where the model ran, when not on this machine ("2 Ray nodes, ...")

    @property
    def images_per_second(self) -> float:
        """The rate of the photos alone: the one-time model load is not theirs."""
        seconds = self.seconds - self.setup_seconds
        return self.embedded / seconds if seconds > 0 else 0.0

    def line(self) -> str:
        if not (self.new or self.updated or self.moved or self.removed or self.failed):
            head = (
                f"nothing changed: {counted(self.unchanged, 'photo')} up to date, no model work"
                if self.unchanged or self.offline
                else "no photos found (JPEG, PNG, WebP, HEIC, …); nothing to index"
            )
        else:
            head = (
                f"{self.new} new, {self.updated} updated, {self.moved} moved, "
                f"{self.removed} removed, {self.failed} failed in {self.seconds:.1f}s"
            )
            if self.embedded:
                on = f" on {self.where}" if self.where else ""
                head += f" ({self.images_per_second:.1f} images/s{on}"
                if self.setup_seconds >= 0.1:
                    head += f"; {self.setup_seconds:.1f}s of it setting up the model, once"
                head += ")"
        if self.reused:
            head += f"; {counted(self.reused, 'copy', 'copies')} reused an embedding"
        if self.offline:
            head += f"; offline, kept: {', '.join(self.offline)}"
        return head + ("; interrupted, run again to finish" if self.interrupted else "")


@dataclass
class _Decoded:
    stat: FileStat
    photo: Photo | None
    pixels: np.ndarray | None
    error: str | None
    phash: int | None = None


@dataclass
class Done:
    """A photo back from the model (its vector and labels), or one that failed to decode."""

    item: _Decoded
    vector: np.ndarray | None = None
    labels: tuple = ()
    reused: bool = False  # the embedding of an identical indexed file, no model call

    @property
    def error(self) -> str | None:
        return self.item.error

    def failure(self, root_id: int) -> FailedEntry:
        stat, error = self.item.stat, self.item.error
        assert error is not None  # asked only of a photo that failed
        return FailedEntry(stat.path, root_id, stat.size, stat.mtime_ns, error)


class Indexer:
    """Writes to a library opened for writing; the model is created only when needed."""

    def __init__(
        self,
        library: Library,
        embedder_factory: Callable[[], ImageEmbedder],
        batch_size: int = 16,
        decode_workers: int = 2,
        save_every_seconds: float = 300.0,
        progress: bool = False,
        model_threads: int = 0,
        threads_policy: Callable[[], int] | None = None,
    ) -> None:
        self.library = library
        self._embedder_factory = embedder_factory
        self._embedder: ImageEmbedder | None = None
        self.batch_size = batch_size
        self.decode_workers = decode_workers
        self.model_threads = model_threads  # 0: unknown
        # called before each batch: the model's threads for it (watch adapts to the machine)
        self.threads_policy = threads_policy
        self.save_every_seconds = save_every_seconds
        self.progress = progress
        self._last_save = time.monotonic()
        self._extensions = image_extensions()
        self.stop = threading.Event()  # set it to finish the current batch and return
        # photos the job in hand embeds: the model is loaded for it (a small one never
        # waits for a backend timing that only a large one repays)
        self.photos_to_embed = 0
        self.setup_seconds = 0.0  # spent loading the model
        # The watcher holds back files that are still changing: neither read nor removed.
        self.hold: Callable[[FileStat], bool] | None = None
        self._taught: list[tuple[int, str, LinearClassifier]] | None = None

    @property
    def embedder(self) -> ImageEmbedder:
        """The model, loaded on first use and checked against the library's."""
        if self._embedder is None:
            began = time.perf_counter()
            embedder = self._embedder_factory()
            self.setup_seconds += time.perf_counter() - began
            self.library.adopt_model(embedder.info, embedder.precision)
            self.library.set_meta(device=str(embedder.device))
            self._embedder = embedder
        return self._embedder

    def reconcile(
        self, roots: Iterable[Path], changed: Iterable[Path] | None = None, save: bool = True
    ) -> Summary:
        """Index new and changed photos under ``roots``, follow moves, drop deleted ones.

        With ``changed`` (files and folders that the watcher saw change), only those are
        looked at; otherwise every root is walked. ``save=False`` leaves writing the FAISS
        file to the caller (the watcher writes it every so often, not after each event).
        """
        started, setup_before = time.perf_counter(), self.setup_seconds
        summary = Summary()
        changed = None if changed is None else [Path(p).absolute() for p in changed]
        try:
            for root in roots:
                if self.stop.is_set():  # walking what is left could outlast a service's stop
                    summary.interrupted = True
                    break
                root = Path(root).expanduser().absolute()
                if changed is None:
                    self._reconcile_root(root, summary)
                else:
                    inside = [p for p in changed if p == root or root in p.parents]
                    if inside:
                        self._reconcile_paths(root, inside, summary)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            if save:
                try:
                    self.library.save_vectors()
                except KeyboardInterrupt:  # came while saving: the file was written first
                    summary.interrupted = True
            summary.seconds = time.perf_counter() - started
            summary.setup_seconds = self.setup_seconds - setup_before
        return summary

    def _reconcile_root(self, root: Path, summary: Summary) -> None:
        root_id = self.library.root_id(str(root))
        prefix = os.path.join(str(root), "")
        stored = self.library.files_under(prefix)
        if not root.is_dir() or (stored and not any(root.iterdir())):
            # A missing or empty mount point: keep its photos, searchable as offline.
            self.library.set_root_online(root_id, False)
            summary.offline += (str(root),)
            log.warning(
                "%s is missing or empty; keeping its %d photos as offline", root, len(stored)
            )
            return
        self.library.set_root_online(root_id, True)
        on_disk = {stat.path: stat for stat in scan(root, self._extensions)}
        self._apply(self._plan(on_disk, stored), root_id, summary)

    def _reconcile_paths(self, root: Path, paths: list[Path], summary: Summary) -> None:
        db = self.library
        root_id = db.root_id(str(root))
        on_disk: dict[str, FileStat] = {}
        stored: dict[str, StoredFile] = {}
        for path in paths:
            if not path.is_file():  # a folder, or something that went: its rows below it
                stored.update(db.files_under(os.path.join(str(path), "")))
            if path.is_dir():
                if not _hidden_below(root, path):
                    on_disk.update((stat.path, stat) for stat in scan(path, self._extensions))
                continue
            known = db.file_at(str(path))
            if known is not None:
                stored[known.path] = known
            stat = _stat_photo(root, path, self._extensions)
            if stat is not None:
                on_disk[stat.path] = stat
        self._apply(self._plan(on_disk, stored), root_id, summary)

    def _plan(self, on_disk: dict[str, FileStat], stored: dict[str, StoredFile]) -> Plan:
        """The diff, leaving out files the caller holds back (still being written)."""
        if self.hold is not None:
            held = {path for path, stat in on_disk.items() if self.hold(stat)}
            on_disk = {path: stat for path, stat in on_disk.items() if path not in held}
            stored = {path: row for path, row in stored.items() if path not in held}
        return make_plan(on_disk, stored)

    def _apply(self, plan: Plan, root_id: int, summary: Summary) -> None:
        summary.unchanged += plan.unchanged
        self._apply_moves_and_removals(plan, root_id, summary)
        if plan.embed:
            self._embed_all(plan, root_id, summary)

    def _apply_moves_and_removals(self, plan: Plan, root_id: int, summary: Summary) -> None:
        db = self.library
        for row, stat in plan.moves:
            db.move(row.id, stat.path, root_id, stat.mtime_ns)
            log.debug("moved %s -> %s", row.path, stat.path)
        if plan.remove:
            ids = [row.id for row in plan.remove]
            self.library.delete(ids)
        summary.moved += len(plan.moves)
        summary.removed += len(plan.remove)

    def _embed_all(self, plan: Plan, root_id: int, summary: Summary) -> None:
        """The plan's new and changed files through the model, committed batch by batch."""
        written = 0
        self.photos_to_embed = len(plan.embed)
        with tqdm(total=len(plan.embed), unit="img", disable=not self.progress) as bar:
            for batch in self._embedded(plan.embed):
                self._commit(batch, root_id, plan, summary)
                written += len(batch)
                bar.update(len(batch))
                if self.stop.is_set():
                    break
        if written < len(plan.embed):
            summary.interrupted = True

    def _embedded(self, files: list[FileStat]) -> Iterator[list[Done]]:
        """Batches of files through the model, in order; ends early once ``stop`` is set.
        This machine: decode threads feed the embedder (another runner, e.g. a Ray cluster,
        overrides this one method: the scan, the plan and the commit stay as they are)."""
        batch: list[_Decoded] = []
        for item in self._decoded(files):
            if self.stop.is_set():
                return
            batch.append(item)
            if len(batch) >= self.batch_size:
                self._adapt_threads()
                yield self._through_model(batch)
                batch = []
        if batch:
            yield self._through_model(batch)

    def _decoded(self, files: list[FileStat]) -> Iterator[_Decoded]:
        """Decoded photos in order, from worker threads: ahead of the model while it runs
        when it leaves a core free, else one batch at a time between its forwards."""
        embedder = self.embedder
        decode = functools.partial(decode_file, embedder=embedder)
        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="vitsearch-decode") as pool:
            if not self._decode_alongside(embedder):
                for start in range(0, len(files), self.batch_size):
                    yield from pool.map(decode, files[start : start + self.batch_size])
                return
            ahead = max(2 * self.batch_size, 4 * self.decode_workers)
            pending: deque[Future] = deque()
            try:
                for stat in files:
                    pending.append(pool.submit(decode, stat))
                    if len(pending) >= ahead:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

    def _adapt_threads(self) -> None:
        if self.threads_policy is None:
            return
        wanted = self.threads_policy()
        if wanted != self.model_threads and self.embedder.set_threads(wanted):
            log.info("model threads %d -> %d", self.model_threads, wanted)
            self.model_threads = wanted

    def _decode_alongside(self, embedder: ImageEmbedder) -> bool:
        """Whether decoding overlaps the forward: yes on a GPU or when the model's threads
        leave a core free. When the model uses every core, a decode thread stalls its
        OpenMP workers: on 2 cores the forward ran 13% slower alongside decoding, more than
        the whole decode costs when each batch is decoded with both cores in between
        (benchmarks/bench_index.py)."""
        if embedder.device != "cpu" or not self.model_threads:
            return True
        return self.model_threads < available_cores()

    def _through_model(self, batch: list[_Decoded]) -> list[Done]:
        """A decoded batch: copies of indexed photos take their embedding, the rest one forward."""
        decoded = [item.photo.content_hash for item in batch if item.photo is not None]
        known = self.library.indexed_with_hashes(decoded) if decoded else {}
        done = [
            Done(item) if item.error is not None else self._reuse(item, known) for item in batch
        ]
        to_model = [d for d in done if d.error is None and d.vector is None]
        if to_model:
            pixels = [d.item.pixels for d in to_model if d.item.pixels is not None]  # all
            result = self.embedder.embed(np.stack(pixels))
            for d, vector, labels in zip(to_model, result.vectors, result.labels, strict=True):
                d.vector, d.labels = vector, tuple(labels)
        return done

    def _reuse(self, item: _Decoded, known: dict[str, int]) -> Done:
        """A byte-identical copy of an indexed photo takes its embedding, with no model call."""
        assert item.photo is not None  # a decoded photo
        source = known.get(item.photo.content_hash)
        found = self.library.embedding(source) if source is not None else None
        if found is None:
            return Done(item)
        vector, labels = found
        return Done(item, vector, tuple(labels), reused=True)

    def _commit(self, batch: list[Done], root_id: int, plan: Plan, summary: Summary) -> None:
        """One transaction for a batch back from the model (here or on a cluster): embedded
        photos with the taught labels added, failures recorded; idempotent by path."""
        started = time.perf_counter()
        failures = [d.failure(root_id) for d in batch if d.error is not None]
        for d in batch:
            if d.error is not None:
                log.warning("skipping %s: %s", d.item.stat.path, d.error)
        ok = [d for d in batch if d.error is None]
        fresh = [d for d in ok if not d.reused]
        vectors = np.stack([d.vector for d in fresh if d.vector is not None]) if fresh else None
        taught = iter(
            custom_labels_for(self._classifiers(), vectors) if vectors is not None else ()
        )
        entries = [
            image_entry(d.item, root_id, d.vector, (() if d.reused else next(taught)) + d.labels)
            for d in ok
        ]
        self.library.write_batch(entries, failures)
        summary.embedded += len(fresh)
        summary.reused += len(ok) - len(fresh)
        self._count(entries, failures, plan, summary)
        log.info(
            "committed %d photo%s (%d failed) in %.2fs",
            len(entries),
            "" if len(entries) == 1 else "s",
            len(failures),
            time.perf_counter() - started,
        )
        self._maybe_save()

    def _classifiers(self):
        """Classifiers taught with ``vitsearch teach``: new photos get their labels too."""
        if self._taught is None:
            self._taught = load_classifiers(self.library)
        return self._taught

    def _count(self, entries, failures, plan: Plan, summary: Summary) -> None:
        for path in [e.path for e in entries]:
            if path in plan.changed:
                summary.updated += 1
            else:
                summary.new += 1
        summary.failed += len(failures)

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_save >= self.save_every_seconds:
            self.library.save_vectors()
            self._last_save = time.monotonic()


def _hidden_below(root: Path, path: Path) -> bool:
    """Whether the walk from ``root`` would skip ``path`` for a hidden or temporary name."""
    return any(is_temporary_name(part) for part in path.relative_to(root).parts)


def _stat_photo(root: Path, path: Path, extensions: frozenset[str]) -> FileStat | None:
    """The stat of a photo file the walk would have listed, or None."""
    if not is_photo_name(path.name, extensions) or _hidden_below(root, path.parent):
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return FileStat(str(path), st.st_size, st.st_mtime_ns) if path.is_file() else None


def decode_file(stat: FileStat, embedder: ImageEmbedder) -> _Decoded:
    try:
        photo = read_photo(stat.path, embedder.decode_size)
        pixels = embedder.preprocess(photo.image)
        phash = photo_hash(photo.image)  # while the decoded photo is in memory: ~0.3 ms
    except ImageDecodeError as exc:
        return _Decoded(stat, None, None, str(exc))
    except Exception as exc:  # the image processor may reject odd images; record, don't crash
        return _Decoded(stat, None, None, f"cannot preprocess: {exc}")
    return _Decoded(stat, photo, pixels, None, phash)


def image_entry(item: _Decoded, root_id: int, vector, labels) -> ImageEntry:
    photo = item.photo
    assert photo is not None  # only a decoded photo is written
    return ImageEntry(
        path=item.stat.path,
        root_id=root_id,
        size=item.stat.size,
        mtime_ns=item.stat.mtime_ns,
        fingerprint=photo.fingerprint,
        content_hash=photo.content_hash,
        width=photo.width,
        height=photo.height,
        taken_at=photo.taken_at if photo.taken_at is not None else item.stat.mtime_ns / 1e9,
        vector=np.asarray(vector, dtype=np.float32),
        labels=tuple(labels),
        phash=item.phash,
    )
