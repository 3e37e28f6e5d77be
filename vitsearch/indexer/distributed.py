"""Indexing on a Ray cluster: ``vitsearch index --ray ADDRESS`` (``auto``: a running one).

The driver does what a single-machine run does up to the plan (scan, diff against the
library, moves and deletes) and after the model (the commit): it is :class:`Indexer` with one
method replaced, :meth:`RayIndexer._embedded`, which sends the plan's new and changed files
through Ray Data instead of the local decode threads:

- **read and decode** (:func:`decode_rows`) in CPU tasks: :func:`vitsearch.photos.decode.read_photo`
  with the model's draft size and the perceptual hash, as the local decoder does;
- **embed** in a pool of actors (:class:`EmbedActor`), each loading the model once with the
  app's own loader and the library's recorded backend: on a GPU where the cluster has them
  (one actor per GPU, the GPU batch size), else on the node's CPU cores;
- **write** on the driver, batch by batch, with the same ``_commit`` as a local run.

The results come back to the driver, which writes them, for both stores: the embedded SQLite
library must have one writer, and for PostgreSQL the writer's advisory lock, the write
sequence, the taught labels and the summary stay in one process too. A batch back is small
(a vector is 3 KB for a ViT-B/16), so this costs the cluster little.

A commit is idempotent per photo (the store upserts by path): a killed job loses only the
batches not yet committed, and the next run's plan holds exactly those files (every committed
one is unchanged on disk by then), so nothing is indexed twice. A lost actor is started again
and its batches sent again; a batch that loses its actor on every try fails the job
(:class:`~vitsearch.errors.ClusterError`) with what was committed kept, as when killed.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from vitsearch.errors import ClusterError, ConfigError, ImageDecodeError
from vitsearch.indexer.reconcile import Done, Indexer, Summary, _Decoded
from vitsearch.model.features import ImageEmbedder
from vitsearch.photos.decode import Photo, read_photo
from vitsearch.photos.files import FileStat
from vitsearch.photos.phash import photo_hash
from vitsearch.records import Label, ModelInfo

log = logging.getLogger(__name__)

AUTO = "auto"  # --ray auto: the cluster this machine already runs (``ray start``)
GPU_BATCH_SIZE = 64  # images per forward on a GPU actor (a CPU actor keeps --batch-size)
EMBED_RETRIES = 3  # tries after the first for a batch whose actor dies (Ray's own for tasks)
DECODE_MEMORY = 256 << 20  # bytes a decode task reserves (a 50 MP photo decodes to 150 MB)
NO_IMAGE = np.zeros((1, 1, 3), np.uint8)  # the image column of a file that failed to decode

ModelLoader = Callable[[int, ModelInfo | None], ImageEmbedder]  # (threads, library's model)


@dataclass(frozen=True)
class Layout:
    """How the embedding stage sits on the cluster."""

    nodes: int
    actors: int
    cpus_per_actor: float
    gpus_per_actor: float
    batch_size: int

    def text(self) -> str:
        kind = "GPU" if self.gpus_per_actor else f"{self.cpus_per_actor:g}-core"
        nodes = f"{self.nodes} Ray node{'s' if self.nodes != 1 else ''}"
        return f"{nodes}, {self.actors} {kind} embedder{'s' if self.actors != 1 else ''}"


def plan_layout(nodes: list[dict], batch_size: int, gpu_batch_size: int) -> Layout:
    """One actor per GPU when the cluster has GPUs; else one per node, on all of the smallest
    node's cores but one, which is left to the decode tasks (the model costs far more)."""
    alive = [node["Resources"] for node in nodes if node.get("Alive")]
    if not alive:
        raise ConfigError("the Ray cluster has no live node; start one with: ray start --head")
    gpus = int(sum(r.get("GPU", 0) for r in alive))
    if gpus:
        return Layout(len(alive), gpus, 1.0, 1.0, gpu_batch_size)
    cpus = min(r.get("CPU", 0) for r in alive)
    if cpus < 2:
        raise ConfigError(
            "each Ray node needs at least 2 CPUs (one embeds, one decodes); "
            "start them with: ray start --num-cpus N"
        )
    return Layout(len(alive), len(alive), max(1.0, math.floor(cpus) - 1), 0.0, batch_size)


def decode_rows(files: dict[str, np.ndarray], draft_size: tuple[int, int]) -> dict:
    """A Ray Data batch of files -> their decoded photos (a failure keeps its row, with the
    reason); the same reading and hashing as a single-machine run."""
    rows: dict[str, list] = {k: [] for k in DECODED}
    for path, size, mtime_ns in zip(files["path"], files["size"], files["mtime_ns"], strict=True):
        rows["path"].append(str(path))
        rows["size"].append(int(size))
        rows["mtime_ns"].append(int(mtime_ns))
        try:
            photo = read_photo(str(path), draft_size)
            image = np.asarray(photo.image.convert("RGB"), dtype=np.uint8)
            phash, error = photo_hash(photo.image), ""
        except ImageDecodeError as exc:
            photo, image, phash, error = None, NO_IMAGE, 0, str(exc)
        rows["image"].append(image)
        rows["error"].append(error)
        rows["width"].append(photo.width if photo else 0)
        rows["height"].append(photo.height if photo else 0)
        rows["taken_at"].append(photo.taken_at if photo and photo.taken_at is not None else np.nan)
        rows["content_hash"].append(photo.content_hash if photo else "")
        rows["fingerprint"].append(photo.fingerprint if photo else "")
        rows["phash"].append(np.uint64(phash))
    out = {k: np.array(v, dtype=DECODED[k]) for k, v in rows.items() if k != "image"}
    out["image"] = _images(rows["image"])
    return out


DECODED = {
    "path": object,
    "size": np.int64,
    "mtime_ns": np.int64,
    "image": object,
    "error": object,
    "width": np.int64,
    "height": np.int64,
    "taken_at": np.float64,
    "content_hash": object,
    "fingerprint": object,
    "phash": np.uint64,
}


def _images(images: list[np.ndarray]) -> np.ndarray:
    """Photos of different sizes as one column (Ray Data keeps it as a ragged tensor)."""
    column = np.empty(len(images), dtype=object)
    column[:] = images
    return column


class EmbedActor:
    """A Ray Data actor: the model loaded once (by the app's loader, the library's backend),
    then each batch of decoded photos preprocessed and embedded in one forward."""

    def __init__(self, loader: ModelLoader, threads: int, model: ModelInfo | None) -> None:
        self.embedder = loader(threads, model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image

        errors = [str(e) for e in batch["error"]]
        pixels, todo = [], []
        for row, (image, error) in enumerate(zip(batch["image"], errors, strict=True)):
            if error:
                continue
            try:
                pixels.append(self.embedder.preprocess(Image.fromarray(np.asarray(image))))
                todo.append(row)
            except Exception as exc:  # the image processor may reject odd images: a failure
                errors[row] = f"cannot preprocess: {exc}"
        dim = self.embedder.info.dim
        vectors = np.zeros((len(errors), dim), np.float32)
        labels = [""] * len(errors)
        if todo:
            result = self.embedder.embed(np.stack(pixels))
            vectors[todo] = result.vectors
            for row, found in zip(todo, result.labels, strict=True):
                labels[row] = json.dumps([[lab.label, lab.score] for lab in found])
        out = {k: v for k, v in batch.items() if k != "image"}
        out["error"] = np.array(errors, dtype=object)
        out["vector"] = vectors
        out["labels"] = np.array(labels, dtype=object)
        return out


def done_rows(batch: dict[str, np.ndarray]) -> list[Done]:
    """A batch back from the actors as the commit takes it."""
    done = []
    for i, path in enumerate(batch["path"]):
        stat = FileStat(str(path), int(batch["size"][i]), int(batch["mtime_ns"][i]))
        error = str(batch["error"][i])
        if error:
            done.append(Done(_Decoded(stat, None, None, error)))
            continue
        taken = float(batch["taken_at"][i])
        photo = Photo(
            None,  # type: ignore[arg-type]  # the image stays on the cluster; its facts come back
            int(batch["width"][i]),
            int(batch["height"][i]),
            None if math.isnan(taken) else taken,
            str(batch["content_hash"][i]),
            str(batch["fingerprint"][i]),
        )
        item = _Decoded(stat, photo, None, None, int(batch["phash"][i]))
        labels = tuple(Label(name, float(score)) for name, score in json.loads(batch["labels"][i]))
        done.append(Done(item, np.asarray(batch["vector"][i], np.float32), labels))
    return done


class RayIndexer(Indexer):
    """An :class:`Indexer` whose model work runs on a Ray cluster at ``address``.

    ``loader(threads, model)`` builds the embedder on an actor: the app passes its own
    ``load_model``, so a cluster runs the very code a single machine does. The driver loads
    the model once too, before any file is sent: to record it in a new library (the actors
    then load the backend the library records) and to refuse another model's library.
    """

    def __init__(
        self,
        library,
        embedder_factory: Callable[[], ImageEmbedder],
        loader: ModelLoader,
        address: str = AUTO,
        gpu_batch_size: int = GPU_BATCH_SIZE,
        **options,
    ) -> None:
        super().__init__(library, embedder_factory, **options)
        self.address = address
        self.loader = loader
        self.gpu_batch_size = gpu_batch_size
        self.layout: Layout | None = None

    def reconcile(self, roots, changed=None, save: bool = True) -> Summary:
        """:meth:`Indexer.reconcile`; its images/s are the whole cluster's (photos committed
        over the run's wall time), and its summary line names the cluster."""
        summary = super().reconcile(roots, changed, save)
        if self.layout is not None:
            summary.where = self.layout.text()
        return summary

    def _embedded(self, files: list[FileStat]) -> Iterator[list[Done]]:
        draft_size = self.embedder.decode_size  # loads and records the model first
        ray = connect(self.address)
        self.layout = layout = plan_layout(ray.nodes(), self.batch_size, self.gpu_batch_size)
        log.info("embedding %d photos on %s", len(files), layout.text())
        started = time.perf_counter()
        results = self._dataset(ray, files, draft_size, layout).iter_batches(
            batch_size=None, batch_format="numpy", prefetch_batches=2
        )
        try:
            for batch in results:
                yield done_rows(batch)
                if self.stop.is_set():
                    return
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as exc:
            raise ClusterError(
                f"a batch of photos lost its Ray worker on every try ({EMBED_RETRIES + 1} "
                f"times, {type(exc).__name__}); the workers' logs say why (often out of "
                "memory: try smaller batches); the photos committed so far are kept, and "
                "the next run indexes the rest"
            ) from exc
        log.info("cluster: %d photos in %.1fs", len(files), time.perf_counter() - started)

    def _dataset(self, ray, files: list[FileStat], draft_size, layout: Layout):
        rows = [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in files]
        blocks = max(1, math.ceil(len(rows) / layout.batch_size))
        data = ray.data.from_items(rows, override_num_blocks=blocks)
        decoded = data.map_batches(
            decode_rows,
            batch_size=layout.batch_size,
            fn_kwargs={"draft_size": tuple(draft_size)},
            num_cpus=1,
            # room for a full-size decode; remote args unlike the actors' also keep Ray Data
            # from fusing the decoding into them (it would run between their forwards)
            memory=DECODE_MEMORY,
        )
        with warnings.catch_warnings():
            # Ray 2.60 warns that remote args are deprecated, but names no parameter for the
            # two below yet: a user of `index --ray` would see a warning they cannot act on
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            return decoded.map_batches(
                EmbedActor,
                batch_size=layout.batch_size,
                fn_constructor_args=(self.loader, int(layout.cpus_per_actor), self.library.model),
                compute=ray.data.ActorPoolStrategy(size=layout.actors),
                num_cpus=layout.cpus_per_actor,
                num_gpus=layout.gpus_per_actor,
                # a lost actor (its worker killed, its node gone) is started again, any number
                # of times, and its batches sent again; but a batch that loses its actor on
                # every try fails the job after a few, not loops for ever (Ray Data's default)
                max_restarts=-1,
                max_task_retries=EMBED_RETRIES,
            )


def connect(address: str):
    """Ray, connected to the cluster at ``address`` (once per process), with its own progress
    bars off: the indexer shows one bar, for the whole cluster."""
    import ray
    import ray.data

    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as exc:
            raise ConfigError(
                f"cannot reach a Ray cluster at {address}: {exc}; start one with "
                "`ray start --head` (then --ray auto) or give its address, HOST:6379"
            ) from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and "finished" lines
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray
