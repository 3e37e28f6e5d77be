"""The library API the CLI, the UI and the tests share: builds the real objects from settings."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from vitsearch.config import ADAPT_THREADS, Settings, available_cores, settings_env
from vitsearch.errors import (
    EmptyLibraryError,
    LibraryLockedError,
    MissingFileError,
    NoMatchError,
    NoSuchLabelError,
    NotIndexedError,
    VitsearchError,
)
from vitsearch.indexer import Indexer, Summary
from vitsearch.indexer.cpu import AdaptiveThreads
from vitsearch.indexer.watcher import Watcher, WatchState
from vitsearch.labels.teach import TeachResult, classifier_summaries, teach_folder
from vitsearch.model.checkpoint import check_checkpoint
from vitsearch.model.feature_files import embed_files, write_features
from vitsearch.photos.files import image_files
from vitsearch.records import NO_FILTERS, Cluster, Filters, Hit, Label, ModelInfo
from vitsearch.search import classify, label_counts, search_by_image, search_by_label, similar_to
from vitsearch.search.clusters import clusters
from vitsearch.search.duplicates import DuplicateGroup, find_duplicates
from vitsearch.search.labels import LabelCount
from vitsearch.search.projection import map_figure_html, map_json, project
from vitsearch.search.query import search_by_bytes
from vitsearch.store import Library, open_library, writer_pid

log = logging.getLogger(__name__)

UPLOAD_LIMIT_MB = 50


def load_model(settings: Settings, built_with: ModelInfo | None = None):
    """The embedder for ``settings.model``, on the backend of the library's model
    ``built_with`` if it has one (imported late: torch takes seconds to import)."""
    check_checkpoint(settings.model)
    from vitsearch.model import Features
    from vitsearch.model import load_model as load

    return load(
        settings.model,
        home=settings.home,
        threads=settings.threads,
        backend=settings.backend,
        precision=settings.precision,
        device=settings.device,
        features=Features(settings.layer, settings.pool),
        batch_size=settings.batch_size,
        recorded=built_with,
    )


def index_folders(
    settings: Settings,
    folders: Sequence[Path],
    progress: bool = False,
    stop: threading.Event | None = None,
) -> Summary:
    """Bring the library at ``settings.home`` in step with ``folders``. Setting ``stop`` (from
    a signal handler, say) ends the run after the batch in hand, committed and saved."""
    check_checkpoint(settings.model)  # the model itself loads at the first photo to embed
    with open_library(settings.home, write=True) as library:
        indexer = make_indexer(settings, library, progress)
        if stop is not None:
            indexer.stop = stop
        _known_folders(library, folders)
        _check_other_model(library, indexer, settings)
        return indexer.reconcile(folders)


def watch_folders(
    settings: Settings, folders: Sequence[Path], on_start: Callable[[Watcher], None] | None = None
) -> WatchState:
    """Reconcile ``folders``, then follow them until the watcher is stopped."""
    adapt = settings.watch_threads == ADAPT_THREADS
    settings = settings.replace(threads=available_cores() if adapt else settings.watch_threads)
    check_checkpoint(settings.model)  # the model itself loads at the first photo to embed
    with open_library(settings.home, write=True) as library:
        indexer = make_indexer(settings, library)
        if adapt:
            indexer.threads_policy = AdaptiveThreads(settings.threads)
        _known_folders(library, folders)
        _check_other_model(library, indexer, settings)
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


def _check_other_model(library: Library, indexer: Indexer, settings: Settings) -> None:
    """A library built with another model name: load the one asked for now, before any
    work, to refuse it if its embeddings differ (the same checkpoint moved is adopted)."""
    recorded = library.model
    if recorded is not None and recorded.name != settings.model:
        indexer.embedder  # noqa: B018  loading checks it against the library's


def make_indexer(settings: Settings, library: Library, progress: bool = False) -> Indexer:
    return Indexer(
        library,
        embedder_factory=lambda: load_model(settings, library.model),
        batch_size=settings.batch_size,
        decode_workers=settings.decode_workers,
        save_every_seconds=settings.index_save_seconds,
        progress=progress,
        model_threads=settings.threads,
    )


def search_image(
    settings: Settings, image: Path, k: int, filters: Filters = NO_FILTERS
) -> list[Hit]:
    if not Path(image).is_file():
        raise MissingFileError(f"no such image file: {image}")
    with open_library(settings.home) as library:
        _check_searchable(library, filters)
        embedder = load_model(settings, library.model)
        library.check_model(embedder.info)
        return _passing(search_by_image(library, embedder, image, k, filters), filters)


def search_upload(
    library: Library, embedder, data: bytes, k: int, filters: Filters = NO_FILTERS
) -> tuple[tuple[Label, ...], list[Hit]]:
    """An uploaded image's labels and nearest photos (the UI's search). Refused, as
    :func:`search_image` is, when ``embedder`` did not build ``library``: its vectors
    would not compare (or not even have the library's dimension)."""
    library.check_model(embedder.info)
    return search_by_bytes(library, embedder, data, k, filters)


def similar_images(
    settings: Settings, path: Path, k: int, filters: Filters = NO_FILTERS
) -> list[Hit]:
    with open_library(settings.home) as library:
        _check_searchable(library, filters)
        return _passing(similar_to(library, path, k, filters), filters)


def search_label(settings: Settings, text: str, k: int, filters: Filters = NO_FILTERS) -> list[Hit]:
    with open_library(settings.home) as library:
        _check_searchable(library, filters)
        return _passing(search_by_label(library, text, k, filters), filters)


def list_labels(settings: Settings) -> list[LabelCount]:
    with open_library(settings.home) as library:
        _check_searchable(library, NO_FILTERS)
        return label_counts(library)


def library_clusters(
    settings: Settings, k: int | str = "auto", recompute: bool = False
) -> list[Cluster]:
    with open_library(settings.home) as library:
        return clusters(library, k, recompute)


def teach_labels(settings: Settings, folder: Path, name: str | None = None) -> TeachResult:
    """Train a classifier from ``folder``'s sub-folders and label the whole library with it."""
    with open_library(settings.home, write=True) as library:
        if library.model is None:
            raise VitsearchError("index some photos first: a taught label lives on their vectors")

        def checked_model():
            embedder = load_model(settings, library.model)
            library.check_model(embedder.info)
            return embedder

        return teach_folder(library, checked_model, folder, name)


def taught_classifiers(settings: Settings) -> list[dict]:
    with open_library(settings.home) as library:
        return classifier_summaries(library)


def forget_classifier(settings: Settings, name: str) -> None:
    with open_library(settings.home, write=True) as library:
        if not library.db.remove_classifier(name):
            raise NoSuchLabelError(f"no taught classifier named {name!r}")


def embed_to_file(settings: Settings, inputs: Sequence[Path], out: Path) -> tuple[int, list[Path]]:
    """Embeddings (at ``settings.layer``/``settings.pool``) of image files, written to ``out``."""
    paths = image_files(inputs)
    kept, vectors = embed_files(load_model(settings), paths, settings.batch_size)
    return len(kept), write_features(out, kept, vectors)


def export_model(settings: Settings, out: Path, quantize: str | None = None, fmt: str = "onnx"):
    """Export the fp32 model to ONNX or OpenVINO in ``out``, checked against PyTorch first."""
    check_checkpoint(settings.model)  # before torch is even imported
    from vitsearch.model import Features, load_embedder
    from vitsearch.model import export as exporting
    from vitsearch.model.export import export_model as export

    # what the export needs, checked before the model loads (seconds, more for a ViT-B)
    exporting._check_out(Path(out).expanduser())
    if fmt == "openvino":
        exporting._require_openvino(quantize)
        exporting._require_onnx(exporting.OPENVINO_INSTALL_HINT)
    else:
        exporting._require_onnx()
    features = Features(settings.layer, settings.pool)
    fp32 = load_embedder(settings.model, threads=settings.threads, features=features)  # cpu fp32
    return export(fp32, out, fmt=fmt, quantize=quantize)


def finetune_model(
    settings: Settings, data_dir: Path, out_dir: Path, progress: bool = False, **options
):
    """Fine-tune ``settings.model`` on the labelled sub-folders of ``data_dir`` into ``out_dir``."""
    from vitsearch.model.finetune import FinetuneOptions, finetune  # torch imports late

    given = {name: value for name, value in options.items() if value is not None}
    return finetune(
        settings.model,
        data_dir,
        out_dir,
        FinetuneOptions(**given),
        threads=settings.threads,
        device=settings.device,
        precision=settings.precision,
        decode_workers=settings.decode_workers,
        progress=progress,
    )


def library_map(
    settings: Settings, method: str = "auto", refit: bool = False, out: Path | None = None
) -> tuple[list[dict], Path | None]:
    """The 2-D map of the library (as JSON rows) and, with ``out``, a standalone HTML scatter."""
    with open_library(settings.home) as library:
        points = project(library, method=method, refit=refit)
        written = map_figure_html(library, points, out) if out is not None else None
        return map_json(points, library), written


def library_duplicates(
    settings: Settings, kinds: tuple[str, ...], threshold: float | None = None
) -> list[DuplicateGroup]:
    with open_library(settings.home) as library:
        _check_searchable(library, NO_FILTERS)  # "empty library", not "no duplicates found"
        return find_duplicates(library, kinds, threshold)


def classify_images(
    settings: Settings, images: Sequence[Path]
) -> list[tuple[str, tuple[Label, ...]]]:
    for image in images:
        if not Path(image).is_file():
            raise MissingFileError(f"no such image file: {image}")
    return classify(load_model(settings), list(images))


def forget_folder(settings: Settings, folder: Path) -> int:
    """Remove a folder's photos from the library (the files stay on disk)."""
    path = str(Path(folder).expanduser().absolute())
    with open_library(settings.home, write=True) as library:
        roots = [root for root, _online in library.db.roots()]
        if path not in roots:
            held = f"its folders are: {', '.join(roots)}" if roots else "it has no folders yet"
            raise NotIndexedError(f"{folder} is not in the library; {held}")
        removed = library.db.forget_root(path)
        library.mark_vectors_changed()
        library.vectors  # noqa: B018  catches the FAISS cache up with the deletions
        return removed


def rebuild_vectors(settings: Settings) -> int:
    """Rebuild the FAISS file from SQLite; no model work."""
    with open_library(settings.home, write=True) as library:
        library.vectors_path.unlink(missing_ok=True)
        library.mark_vectors_changed()
        return len(library.vectors)


def library_status(settings: Settings) -> dict:
    with open_library(settings.home) as library:
        counts = library.db.counts()
        model = library.model
        return {
            "images": counts.images,
            "failed": counts.failed,
            "offline": counts.offline,
            "vectors": library.vector_count() if model else 0,
            "model": model.name if model else None,
            "model_fingerprint": model.fingerprint if model else None,
            "dim": model.dim if model else None,
            "backend": model.made_by if model else None,
            "precision": library.db.get_meta("precision"),
            "device": library.db.get_meta("device"),
            "home": str(settings.home),
            "folders": [{"path": p, "online": online} for p, online in library.db.roots()],
            "writer_pid": writer_pid(settings.home),
            "last_commit_at": _iso(library.db.get_meta("last_commit_at")),
        }


def trash_photos(settings: Settings, ids: Sequence[int]) -> tuple[int, list[str]]:
    """Move library photos (by id, never by a path from outside) to the system trash."""
    from send2trash import send2trash

    with open_library(settings.home) as library:
        photos = library.db.details(list(ids))
    moved, problems = [], []
    for photo in photos.values():
        try:
            send2trash(photo.path)
            moved.append(Path(photo.path))
        except OSError as exc:
            problems.append(f"could not move {photo.path} to the trash: {exc}")
    _forget_paths(settings, moved)
    return len(moved), problems


def _forget_paths(settings: Settings, paths: Sequence[Path]) -> None:
    """Take deleted files out of the library now, unless a watcher holds it (it will)."""
    try:
        library = open_library(settings.home, write=True)
    except LibraryLockedError:
        return
    with library:
        roots = [Path(path) for path, _online in library.db.roots()]
        make_indexer(settings, library).reconcile(roots, changed=list(paths))


def start_indexing(settings: Settings, folder: Path) -> int:
    """Index ``folder`` in a background process; returns its pid."""
    folder = folder.expanduser().absolute()
    if not folder.is_dir():
        raise MissingFileError(f"no such folder: {folder}")
    holder = writer_pid(settings.home)
    if holder is not None:
        raise LibraryLockedError(
            f"another vitsearch process (pid {holder}) is writing to this library; "
            "it indexes its folders itself"
        )
    command = [sys.executable, "-m", "vitsearch", "index", str(folder), "--quiet"]
    env = {**os.environ, **settings_env(settings)}
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    return process.pid


def run_ui(settings: Settings, host: str, port: int) -> None:
    """Serve the Streamlit app over the library, in place of this process."""
    script = Path(__file__).parent / "ui" / "app.py"
    options = {
        "server.address": host,
        "server.port": port,
        "server.headless": "true",
        "server.maxUploadSize": UPLOAD_LIMIT_MB,
        "server.fileWatcherType": "none",
        "browser.gatherUsageStats": "false",
        "client.toolbarMode": "minimal",
    }
    command = [sys.executable, "-m", "streamlit", "run", str(script)]
    command += [part for name, value in options.items() for part in (f"--{name}", str(value))]
    # Become Streamlit (no child left behind): signals and Ctrl-C reach the server itself.
    os.execve(sys.executable, command, {**os.environ, **settings_env(settings)})


def _iso(timestamp: str | None) -> str | None:
    if not timestamp:
        return None
    return datetime.fromtimestamp(float(timestamp)).astimezone().isoformat(timespec="seconds")


def _check_searchable(library: Library, filters: Filters) -> None:
    """Before any model work: a library with photos, and some photo passing the filters."""
    if library.db.vector_count() == 0:
        raise EmptyLibraryError(empty_library_text(library))
    if filters.restricts_ids and len(library.allowed_ids(filters)) == 0:
        raise NoMatchError(f"no photo passes these filters: {filter_text(filters)}")


def empty_library_text(library: Library) -> str:
    where = f"the library at {library.home} is empty"
    if not library.on_disk:
        where = f"there is no library at {library.home} yet"
    return f"{where}; index some photos with: vitsearch index FOLDER"


def _passing(hits: list[Hit], filters: Filters) -> list[Hit]:
    """The hits; none at all under filters is said, naming them (a score bar, say)."""
    if not hits and filters != NO_FILTERS:
        raise NoMatchError(f"no photo passes these filters: {filter_text(filters)}")
    return hits


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


def _when(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp)
    midnight = moment.time() == datetime.min.time()
    return f"{moment:%Y-%m-%d}" if midnight else f"{moment:%Y-%m-%dT%H:%M:%S}"


def _known_folders(library: Library, folders: Sequence[Path]) -> None:
    """A folder never indexed must exist; a known one that vanished goes offline instead."""
    known = {path for path, _online in library.db.roots()}
    for folder in folders:
        path = Path(folder).expanduser().absolute()
        if not path.is_dir() and str(path) not in known:
            raise MissingFileError(f"no such folder: {folder}")
