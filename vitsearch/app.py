"""The one front door: :func:`open_app` builds an :class:`App` over one library, and the CLI,
the UI, the benchmarks and the tests call its methods.

An ``App`` holds the :class:`~vitsearch.store.Library` and, loaded on first need, the embedder,
checked once against the model the library was built with. Each method is one use case; it
checks arguments, files and the library before any model work, and returns frozen records.
The functions at the end (``load_model``, ``job_model``, ``cluster_model``) load the model
from settings; the tools (export, finetune, migrate) are in :mod:`vitsearch.tools`.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from vitsearch import launch
from vitsearch.config import (
    ADAPT_THREADS,
    DEFAULT_MODEL,
    Settings,
    available_cores,
)
from vitsearch.errors import (
    EmptyLibraryError,
    LibraryLockedError,
    MissingFileError,
    NoMatchError,
    NoSuchLabelError,
    NotIndexedError,
    VitsearchError,
)
from vitsearch.explore.clusters import clusters
from vitsearch.explore.duplicates import (
    BURST_THRESHOLD,
    NEAR_THRESHOLD,
    DuplicateGroup,
    find_duplicates,
)
from vitsearch.explore.map_view import check_map_out, map_figure, map_figure_html, map_json
from vitsearch.explore.projection import (
    MapPoints,
    preview_pca,
    project,
    umap_pending,
    warm_umap,
)
from vitsearch.indexer import Indexer, Summary
from vitsearch.indexer.backend_move import may_move, move_library
from vitsearch.indexer.watcher import Watcher, WatchState
from vitsearch.labels.search import LabelCount, label_counts, search_by_label
from vitsearch.labels.teach import TeachResult, classifier_summaries, teach_folder
from vitsearch.machine.cpu import AdaptiveThreads
from vitsearch.model.checkpoint import check_checkpoint
from vitsearch.model.choice.runtime import checkpoint_source
from vitsearch.model.feature_files import check_features_out, embed_files, write_features
from vitsearch.model.features import Features, ImageEmbedder
from vitsearch.photos.files import image_files
from vitsearch.photos.thumbnails import Thumbnails
from vitsearch.records import (
    NO_FILTERS,
    Cluster,
    Filters,
    FolderStatus,
    Hit,
    Label,
    LibraryStatus,
    ModelInfo,
    PhotoDetails,
    TaughtClassifier,
)
from vitsearch.search import classify, search_by_image, similar_to
from vitsearch.search.query import search_by_bytes, similar_to_id
from vitsearch.store import Library, open_library, writer_pid

log = logging.getLogger(__name__)

T = TypeVar("T")
REFRESH_SECONDS = 1.0  # a live app looks for a writer's commits at most this often


def open_app(settings: Settings, write: bool = False, live: bool = False) -> App:
    """The app over the library at ``settings.home``: a reader, or with ``write`` the writer
    (which takes the library's lock). ``live`` (the UI: one app, many threads, for hours)
    serialises calls and sees what a writer commits meanwhile."""
    library = open_library(settings.home, write=write, store=settings.store or None)
    return App(_with_library_model(settings, library), library, live=live)


def _with_library_model(settings: Settings, library: Library) -> Settings:
    """No ``--model`` (the default) on a library built with another model: the library's own,
    as it records it, not the Hub's default."""
    recorded = library.model
    if settings.model != DEFAULT_MODEL or recorded is None or recorded.name == DEFAULT_MODEL:
        return settings
    log.info("model %s: the library's own", recorded.name)
    return settings.replace(model=recorded.name)


def _guarded(method: Callable[..., T]) -> Callable[..., T]:
    """One call at a time on a live app (FAISS catch-up mutates the index), each on a
    library caught up with the writer's commits."""

    @wraps(method)
    def call(self: App, *args, **kwargs) -> T:
        with self._current():
            return method(self, *args, **kwargs)

    return call


class App:
    """Open with :func:`open_app`; close it (or use ``with``) to save and release the library."""

    near_threshold = NEAR_THRESHOLD
    burst_threshold = BURST_THRESHOLD

    def __init__(
        self,
        settings: Settings,
        library: Library,
        embedder: ImageEmbedder | None = None,
        live: bool = False,
    ):
        self.settings = settings
        self.library = library
        self.live = live
        self._embedder = embedder
        self._lock = threading.RLock()
        self._refreshed = 0.0
        self._thumbnails = Thumbnails(settings.home)

    # -- the model, loaded on first need --------------------------------------------------

    @property
    def embedder(self) -> ImageEmbedder:
        """The model for ``settings.model``, on the backend of the library's model, refused
        when its embeddings would not compare with the library's."""
        with self._lock:
            if self._embedder is None:
                # a query never waits a minute to time the backends: index and watch do
                self._refuse_other_checkpoint()
                embedder = load_model(self.settings, self.library.model)
                self.library.check_model(embedder.info)
                self._embedder = embedder
            return self._embedder

    # -- writing: the library's one writer ------------------------------------------------

    def index(
        self,
        folders: Sequence[Path],
        progress: bool = False,
        stop: threading.Event | None = None,
    ) -> Summary:
        """Bring the library in step with ``folders``. Setting ``stop`` (from a signal
        handler, say) ends the run after the batch in hand, committed and saved."""
        check_checkpoint(self.settings.model)  # the model itself loads at the first photo
        indexer = self._indexer(self.settings, progress, cluster=bool(self.settings.ray))
        if stop is not None:
            indexer.stop = stop
        self._check_folders(folders)
        self._check_other_model(indexer)
        return indexer.reconcile(folders)

    def watch(
        self, folders: Sequence[Path], on_start: Callable[[Watcher], None] | None = None
    ) -> WatchState:
        """Reconcile ``folders``, then follow them until the watcher is stopped."""
        adapt = self.settings.watch_threads == ADAPT_THREADS
        threads = available_cores() if adapt else self.settings.watch_threads
        settings = self.settings.replace(threads=threads)
        check_checkpoint(settings.model)  # the model itself loads at the first photo
        indexer = self._indexer(settings)
        if adapt:
            indexer.threads_policy = AdaptiveThreads(settings.threads)
        self._check_folders(folders)
        self._check_other_model(indexer)
        watcher = Watcher(
            indexer,
            folders,
            quiet_seconds=settings.watch_quiet_seconds,
            rescan_seconds=settings.watch_rescan_seconds,
            save_seconds=settings.index_save_seconds,
        )
        if on_start is not None:
            on_start(watcher)
        return watcher.run()

    def forget_folder(self, folder: Path) -> int:
        """Remove a folder's photos from the library (the files stay on disk)."""
        path = str(Path(folder).expanduser().absolute())
        roots = self.folders()
        if path not in roots:
            held = f"its folders are: {', '.join(roots)}" if roots else "it has no folders yet"
            raise NotIndexedError(f"{folder} is not in the library; {held}")
        return self.library.forget_root(path)

    def rebuild_vectors(self) -> int:
        """Rebuild the FAISS file from SQLite; no model work."""
        return self.library.rebuild_vectors()

    def teach(self, folder: Path, name: str | None = None) -> TeachResult:
        """Train a classifier from ``folder``'s sub-folders and label the whole library."""
        if self.library.model is None:
            raise VitsearchError("index some photos first: a taught label lives on their vectors")
        return teach_folder(self.library, lambda: self.embedder, folder, name)

    def forget_taught(self, name: str) -> None:
        if not self.library.remove_classifier(name):
            raise NoSuchLabelError(f"no taught classifier named {name!r}")

    # -- queries --------------------------------------------------------------------------

    @_guarded
    def search_image(self, image: Path, k: int, filters: Filters = NO_FILTERS) -> list[Hit]:
        """The photos nearest to any image file."""
        if not Path(image).is_file():
            raise MissingFileError(f"no such image file: {image}")
        self._check_searchable(filters)
        hits = search_by_image(self.library, self.embedder, image, k, filters)
        return _passing(hits, filters)

    @_guarded
    def search_upload(
        self, data: bytes, k: int, filters: Filters = NO_FILTERS
    ) -> tuple[tuple[Label, ...], list[Hit]]:
        """An uploaded image's labels and its nearest photos (the UI's search)."""
        self._check_searchable(filters)
        labels, hits = search_by_bytes(self.library, self.embedder, data, k, filters)
        return labels, _passing(hits, filters)

    @_guarded
    def similar(self, path: Path, k: int, filters: Filters = NO_FILTERS) -> list[Hit]:
        """More photos like an indexed photo, itself excluded."""
        self._check_searchable(filters)
        try:
            return _passing(similar_to(self.library, path, k, filters), filters)
        except NotIndexedError:
            if not Path(path).expanduser().exists():
                raise MissingFileError(f"no such file: {path}") from None
            raise

    @_guarded
    def similar_to_photo(self, image_id: int, k: int, filters: Filters = NO_FILTERS) -> list[Hit]:
        """More photos like the library's photo ``image_id`` (the UI's "Similar")."""
        self._check_searchable(filters)
        return _passing(similar_to_id(self.library, image_id, k, filters), filters)

    @_guarded
    def search_label(self, text: str, k: int, filters: Filters = NO_FILTERS) -> list[Hit]:
        self._check_searchable(filters)
        return _passing(search_by_label(self.library, text, k, filters), filters)

    @_guarded
    def labels(self) -> list[LabelCount]:
        self._check_searchable(NO_FILTERS)
        return label_counts(self.library)

    def classify(self, images: Sequence[Path]) -> list[tuple[str, tuple[Label, ...]]]:
        """The model's top labels for image files (indexed or not)."""
        for image in images:
            if not Path(image).is_file():
                raise MissingFileError(f"no such image file: {image}")
        # any model, no library check; the library's own runs on its backend, untimed
        embedder = load_model(self.settings, self._own_model())
        return classify(embedder, list(images))

    def embed_to_file(self, inputs: Sequence[Path], out: Path) -> tuple[int, list[Path]]:
        """Embeddings (at ``settings.layer``/``settings.pool``) of image files, written to
        ``out``: (how many photos, the files written)."""
        check_features_out(out)
        paths = image_files(inputs)
        if not paths:
            raise MissingFileError(f"no photos found in {', '.join(map(str, inputs))}")
        embedder = load_model(self.settings)  # any model, any layer: no library check
        kept, vectors = embed_files(embedder, paths, self.settings.batch_size)
        return len(kept), write_features(out, kept, vectors)

    # -- exploring ------------------------------------------------------------------------

    @_guarded
    def clusters(self, k: int | str = "auto", recompute: bool = False) -> list[Cluster]:
        return clusters(self.library, k, recompute)

    @_guarded
    def cluster_page(self, cluster_id: int, offset: int, limit: int) -> list[Hit]:
        """A cluster's photos, closest to its centre first."""
        return self.library.cluster_members(cluster_id, offset, limit)

    @_guarded
    def map_points(self, method: str = "auto", refit: bool = False) -> MapPoints:
        """Every photo's place on the 2-D map, clustered first (the map is coloured by
        cluster), computing only what is missing."""
        points = project(self.library, method=method, refit=refit)
        if len(points) >= 2 and not self.library.clusters():
            clusters(self.library)
        return points

    def warm_map(self) -> bool:
        """Compile UMAP's code for this library's map before its first use (the UI does it in
        a thread at start). Not serialised: it reads two numbers, then works on its own."""
        with self._current():
            count, model = self.library.embedding_count(), self.library.model
        return warm_umap(count, model.dim if model is not None else 0)

    @_guarded
    def map_needs_umap(self, refit: bool = False) -> bool:
        """Whether the map would run UMAP now (a fit, or placing new photos)."""
        return umap_pending(self.library, refit=refit)

    @_guarded
    def map_preview(self) -> MapPoints:
        """A PCA map computed now and stored nowhere (while UMAP warms up), clustered first."""
        points = preview_pca(self.library)
        if len(points) >= 2 and not self.library.clusters():
            clusters(self.library)
        return points

    @_guarded
    def map_figure(self, points: MapPoints):
        """The map as a Plotly figure (the UI's)."""
        return map_figure(self.library, points)

    def check_map_out(self, out: Path | None) -> None:
        """Refuse a map file whose folder does not exist, before any map work."""
        if out is not None:
            check_map_out(out)

    @_guarded
    def map_rows(
        self, points: MapPoints, out: Path | None = None
    ) -> tuple[list[dict], Path | None]:
        """The map as JSON rows and, with ``out``, as standalone HTML written there."""
        written = map_figure_html(self.library, points, out) if out is not None else None
        return map_json(points, self.library), written

    @_guarded
    def duplicates(
        self, kinds: tuple[str, ...], threshold: float | None = None
    ) -> list[DuplicateGroup]:
        self._check_searchable(NO_FILTERS)  # "empty library", not "no duplicates found"
        return find_duplicates(self.library, kinds, threshold)

    # -- what the library holds -----------------------------------------------------------

    @_guarded
    def status(self) -> LibraryStatus:
        library = self.library
        counts = library.counts()
        model = library.model
        return LibraryStatus(
            images=counts.images,
            failed=counts.failed,
            offline=counts.offline,
            vectors=library.vector_count() if model else 0,
            model=model.name if model else None,
            model_fingerprint=model.fingerprint if model else None,
            dim=model.dim if model else None,
            backend=model.made_by if model else None,
            precision=library.get_meta("precision"),
            device=library.get_meta("device"),
            home=library.location,
            folders=tuple(FolderStatus(path, online) for path, online in library.roots()),
            writer_pid=writer_pid(self.settings.home, self.settings.store or None),
            last_commit_at=_iso(library.get_meta("last_commit_at")),
        )

    @_guarded
    def photo_count(self) -> int:
        """Photos with a vector (what queries can find)."""
        return self.library.embedding_count()

    @_guarded
    def folders(self) -> list[str]:
        """The folders given to ``index``."""
        return [path for path, _online in self.library.roots()]

    @_guarded
    def details(self, ids: Sequence[int]) -> dict[int, PhotoDetails]:
        return self.library.details(list(ids))

    @_guarded
    def photos(self, ids: Sequence[int]) -> list[Hit]:
        """Library photos by id, in that order (those gone meanwhile left out)."""
        return self.library.hits(list(ids), [1.0] * len(ids))

    @_guarded
    def failures(self, limit: int = 100) -> list[tuple[str, str | None]]:
        """Files that could not be read: (path, why)."""
        return self.library.failures(limit=limit)

    @_guarded
    def taught(self) -> list[TaughtClassifier]:
        """The taught classifiers: labels, accuracy, whether open-set."""
        return classifier_summaries(self.library)

    def thumbnail(self, photo: PhotoDetails) -> bytes | None:
        """A JPEG thumbnail (cached in the home), or None when the file cannot be read."""
        return self._thumbnails.get(photo)

    # -- acting on photos and processes ---------------------------------------------------

    def trash(self, ids: Sequence[int]) -> tuple[int, list[str]]:
        """Move library photos (by id, never by a path from outside) to the system trash,
        then take them out of the library: (photos moved, problems)."""
        from send2trash import send2trash

        moved, problems = [], []
        for photo in self.details(ids).values():
            try:
                send2trash(photo.path)
                moved.append(Path(photo.path))
            except OSError as exc:
                problems.append(f"could not move {photo.path} to the trash: {exc}")
        self._forget_paths(moved)
        return len(moved), problems

    def start_indexing(self, folder: Path) -> int:
        """Index ``folder`` in a background process; returns its pid."""
        return launch.start_indexing(self.settings, folder)

    # -- opening and closing --------------------------------------------------------------

    def close(self) -> None:
        self.library.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    @contextmanager
    def _current(self) -> Iterator[None]:
        with self._lock:
            if self.live and time.monotonic() - self._refreshed > REFRESH_SECONDS:
                self.library.refresh()
                self._refreshed = time.monotonic()
            yield

    def _indexer(self, settings: Settings, progress: bool = False, cluster: bool = False):
        library = self.library

        def embedder_factory():  # sized for the job that asks for it (``photos_to_embed``)
            return job_model(settings, library, indexer.photos_to_embed)

        options: dict[str, Any] = {
            "embedder_factory": embedder_factory,
            "batch_size": settings.batch_size,
            "decode_workers": settings.decode_workers,
            "save_every_seconds": settings.index_save_seconds,
            "progress": progress,
            "model_threads": settings.threads,
        }
        if cluster:  # the same plan and commit; the model work on Ray (imported only then)
            from vitsearch.indexer.distributed import RayIndexer

            loader = functools.partial(cluster_model, settings)
            gpu_batch = settings.ray_gpu_batch_size
            indexer: Indexer = RayIndexer(
                library, address=settings.ray, loader=loader, gpu_batch_size=gpu_batch, **options
            )
        else:
            indexer = Indexer(library, **options)
        return indexer

    def _check_folders(self, folders: Sequence[Path]) -> None:
        """A folder never indexed must exist; a known one that vanished goes offline."""
        known = set(self.folders())
        for folder in folders:
            path = Path(folder).expanduser().absolute()
            if path.is_file():
                raise MissingFileError(
                    f"{folder} is a file: index takes folders (its folder is {path.parent})"
                )
            if not path.is_dir() and str(path) not in known:
                raise MissingFileError(f"no such folder: {folder}")

    def _own_model(self) -> ModelInfo | None:
        """The library's model when the settings name it, else None."""
        recorded = self.library.model
        return recorded if recorded is not None and recorded.name == self.settings.model else None

    def _check_other_model(self, indexer: Indexer) -> None:
        """A library built with another model name: refuse another checkpoint now, before
        any work; the same checkpoint moved loads now, and is adopted under its new name."""
        if self._refuse_other_checkpoint():
            _ = indexer.embedder  # loading checks the loaded model too (its dimension)

    def _refuse_other_checkpoint(self) -> bool:
        """Whether the library was built under another model name, refused from the files
        when that checkpoint is not the library's model (seconds before loading it would)."""
        recorded = self.library.model
        if recorded is None or recorded.name == self.settings.model:
            return False
        check_checkpoint(self.settings.model)
        source = checkpoint_source(self.settings.model, features_of(self.settings))
        self.library.check_source(self.settings.model, source)
        return True

    def _check_searchable(self, filters: Filters) -> None:
        """Before any model work: a library with photos, and some photo passing the filters."""
        if self.library.embedding_count() == 0:
            raise EmptyLibraryError(empty_library_text(self.library))
        if filters.restricts_ids and len(self.library.allowed_ids(filters)) == 0:
            raise NoMatchError(f"no photo passes these filters: {filter_text(filters)}")

    def _forget_paths(self, paths: Sequence[Path]) -> None:
        """Take deleted files out of the library now, unless a watcher holds it (it will)."""
        if self.library.writable:
            self._indexer(self.settings).reconcile(self.folders(), changed=list(paths))
            return
        try:
            writer = open_app(self.settings, write=True)
        except LibraryLockedError:
            return
        with writer:
            writer._forget_paths(paths)


def empty_library_text(library: Library) -> str:
    where = f"the library at {library.location} is empty"
    if not library.on_disk:
        where = f"there is no library at {library.location} yet"
    return f"{where}; index some photos with: vitsearch index FOLDER"


def filter_text(filters: Filters) -> str:
    """The filters in words: "under /photos/2019, taken on or after 2019-06-01"."""
    parts = [f"under {filters.under}"] if filters.under else []
    if filters.after is not None:
        parts.append(f"taken on or after {_when(filters.after)}")
    if filters.before is not None:
        parts.append(f"taken before {_when(filters.before)}")
    if filters.min_score is not None:
        parts.append(f"score at least {filters.min_score:g}")
    return ", ".join(parts)


def _passing(hits: list[Hit], filters: Filters) -> list[Hit]:
    """The hits; none at all under filters is said, naming them (a score bar, say)."""
    if not hits and filters != NO_FILTERS:
        raise NoMatchError(f"no photo passes these filters: {filter_text(filters)}")
    return hits


def _when(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp)
    midnight = moment.time() == datetime.min.time()
    return f"{moment:%Y-%m-%d}" if midnight else f"{moment:%Y-%m-%dT%H:%M:%S}"


def _iso(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(float(timestamp)).astimezone().isoformat(timespec="seconds")


# -- the model: for the app, the tools and Ray actors --------------------------------------


def features_of(settings: Settings) -> Features:
    """The layer and pooling the settings ask of the model."""
    return Features(settings.layer, settings.pool)


def load_model(settings: Settings, built_with: ModelInfo | None = None, photos: int = 0):
    """The embedder for ``settings.model``, on the backend of the library's model
    ``built_with`` if it has one (imported late: torch takes seconds to import). ``photos``:
    how many an index or watch run is about to embed; only a job of
    ``settings.time_backends_from`` photos or more times the backends (0: never)."""
    check_checkpoint(settings.model)
    from vitsearch.model import load_model as load

    return load(
        settings.model,
        home=settings.home,
        threads=settings.threads,
        backend=settings.backend,
        precision=settings.precision,
        device=settings.device,
        features=features_of(settings),
        batch_size=settings.batch_size,
        recorded=built_with,
        photos=photos,
        time_from=settings.time_backends_from,
    )


def job_model(settings: Settings, library: Library, photos: int):
    """The model for an index or watch job of ``photos`` on ``library``: a large job times the
    backends, and may move a small torch library to the one that wins (its photos embedded
    again; see :mod:`vitsearch.indexer.backend_move`)."""
    time_from = settings.time_backends_from
    automatic = settings.backend == "auto" and settings.precision == "auto"
    if automatic and photos >= time_from and may_move(library, photos, time_from):
        recorded = library.model
        assert recorded is not None  # may_move: the library has a model
        fresh = load_model(settings, None, photos=photos)  # timed as for a new library
        if fresh.info.fingerprint == recorded.fingerprint:
            return fresh
        moved = fresh.info.source == recorded.source and move_library(
            library, fresh, settings.batch_size, settings.decode_workers
        )
        if moved:
            return fresh
    return load_model(settings, library.model, photos=photos)


def cluster_model(settings: Settings, threads: int, built_with: ModelInfo | None):
    """:func:`load_model` on a Ray actor (``index --ray``): the actor's cores, the backend
    the library records; timed there as a large job is (a cluster is for large ones)."""
    return load_model(
        settings.replace(threads=threads), built_with, photos=settings.time_backends_from
    )
