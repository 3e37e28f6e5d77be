"""The ``vitsearch`` command: each command is a few lines over :mod:`vitsearch.app` (``export``,
``finetune`` and ``migrate``: over :mod:`vitsearch.tools`)."""

from __future__ import annotations

import functools
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import click

from vitsearch import launch
from vitsearch.app import open_app
from vitsearch.config import BACKENDS, POOLS, PRECISIONS, Settings, load_settings
from vitsearch.errors import VitsearchError
from vitsearch.records import Cluster, Filters, Hit, Label, counted, display_label
from vitsearch.tools.export import export_model
from vitsearch.tools.finetune import finetune_model
from vitsearch.tools.migrate import migrate_library

log = logging.getLogger("vitsearch")

EXISTING_FILE = click.Path(path_type=Path)


def library_options(log_level: int = logging.WARNING) -> Callable[[Callable], Callable]:
    """--home, --model, --device, --precision, --debug, -v/-q on every command."""
    return functools.partial(_with_library_options, log_level=log_level)


def _with_library_options(command: Callable, log_level: int) -> Callable:
    options = [
        click.option(
            "--home",
            type=click.Path(path_type=Path),
            help="Library directory [env VITSEARCH_HOME].",
        ),
        click.option(
            "--store",
            metavar="URL",
            help="A PostgreSQL library, postgresql://user@host/db [env VITSEARCH_STORE].",
        ),
        click.option("--model", help="Hub id or local checkpoint directory [env VITSEARCH_MODEL]."),
        click.option(
            "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="Model device."
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            help="Model precision (int8: torch dynamic quantization, CPU).",
        ),
        click.option(
            "--backend",
            type=click.Choice(BACKENDS),
            help=(
                "auto: the fastest within tolerance here; onnx: ONNX Runtime; openvino: "
                "OpenVINO (the openvino extra) [VITSEARCH_BACKEND]."
            ),
        ),
        click.option("--debug", is_flag=True, default=None, help="Show tracebacks."),
        click.option("-v", "--verbose", is_flag=True, help="Log more (debug)."),
        click.option("-q", "--quiet", is_flag=True, help="Log only errors."),
    ]
    for option in reversed(options):
        command = option(command)

    @functools.wraps(command)
    def wrapper(home, store, model, device, precision, backend, debug, verbose, quiet, **kwargs):
        settings = None
        try:
            settings = load_settings(
                home=home,
                store=store,
                model=model,
                device=device,
                precision=precision,
                backend=backend,
                debug=debug,
                **_settings_flags(kwargs),
            )
            level = logging.DEBUG if verbose else logging.ERROR if quiet else log_level
            _setup_logging(level, everything=settings.debug)
            return command(settings, **kwargs)
        except BrokenPipeError:  # `vitsearch ... | head` closed the pipe: not an error
            sys.stderr.close()
            sys.exit(0)
        except (VitsearchError, OSError) as exc:
            if settings is not None and settings.debug:
                raise
            raise click.ClickException(f"{exc} (run with --debug for a traceback)") from None

    return wrapper


# the embedding a library is built on, for the commands that make embeddings
layer_option = click.option(
    "--layer", type=int, help="Embedding layer: -1 final (default), 0..N hidden state."
)
pool_option = click.option("--pool", type=click.Choice(POOLS), help="Token pooling.")


SETTINGS_FLAGS = (
    "batch_size",
    "threads",
    "decode_workers",
    "watch_quiet_seconds",
    "watch_rescan_seconds",
    "watch_threads",
    "layer",
    "pool",
    "ray",
)


def _settings_flags(kwargs: dict) -> dict:
    return {name: kwargs.pop(name) for name in SETTINGS_FLAGS if name in kwargs}


class _Date(click.DateTime):
    """click's DateTime, shown and explained as YYYY-MM-DD, not as strftime formats."""

    def get_metavar(self, *args, **kwargs) -> str:
        return "YYYY-MM-DD[THH:MM:SS]"

    def convert(self, value, param, ctx):
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS", param, ctx)


DATE = _Date(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"])
# how many results: a usage error (exit 2) below 1, not an empty answer
RESULTS = click.IntRange(min=1)


def filter_options(command: Callable) -> Callable:
    """--under, --after, --before, --min-score, passed on as one ``filters`` argument."""

    @click.option("--under", type=click.Path(path_type=Path), help="Only photos below FOLDER.")
    @click.option("--after", type=DATE, help="Taken on/after this date (EXIF, else file time).")
    @click.option("--before", type=DATE, help="Taken before this date.")
    @click.option("--min-score", type=float, help="Only results scoring at least this.")
    @functools.wraps(command)
    def wrapper(*args, under, after, before, min_score, **kwargs):
        filters = Filters(
            under=str(under.expanduser().absolute()) if under else None,
            after=after.timestamp() if after else None,
            before=before.timestamp() if before else None,
            min_score=min_score,
        )
        return command(*args, filters=filters, **kwargs)

    return wrapper


@click.group()
@click.version_option(package_name="vitsearch")
def main() -> None:
    """Local, private semantic search over your photos with a Vision Transformer."""


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--batch-size", type=int, help="Images per model forward [env VITSEARCH_BATCH_SIZE].")
@click.option("--threads", type=int, help="Torch threads [env VITSEARCH_THREADS].")
@click.option("--decode-workers", type=int, help="Decode threads [env VITSEARCH_DECODE_WORKERS].")
@click.option(
    "--ray",
    metavar="ADDRESS",
    help="Embed on a Ray cluster: HOST:PORT, or auto for a running one [env VITSEARCH_RAY].",
)
@layer_option
@pool_option
@library_options()
def index(settings: Settings, paths: tuple[Path, ...]) -> None:
    """Index the photos in PATHS (recursively): new, changed, moved and deleted files."""
    stop, signals = _stop_asked()
    try:
        with open_app(settings, write=True) as writer:
            summary = writer.index(paths, progress=sys.stderr.isatty(), stop=stop)
    except KeyboardInterrupt:  # a second Ctrl-C, or one while the library was closing
        click.echo("interrupted, run again to finish: every committed batch is kept")
        sys.exit(130)
    click.echo(summary.line())
    if summary.interrupted and signal.SIGINT in signals:  # Ctrl-C; a stop asked for exits 0
        sys.exit(130)


def _stop_asked() -> tuple[threading.Event, list[int]]:
    """An event set by SIGTERM (systemd, kill) or a first Ctrl-C: the run stops after the
    batch in hand. A flag rather than KeyboardInterrupt, which Python drops when it lands
    in a finalizer; a second Ctrl-C still interrupts at once."""
    stop = threading.Event()
    received: list[int] = []

    def handle(signum: int, _frame) -> None:
        if signum == signal.SIGINT and signal.SIGINT in received:
            raise KeyboardInterrupt
        received.append(signum)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, handle)
    return stop, received


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--quiet-seconds",
    "watch_quiet_seconds",
    type=float,
    help="Index a file once it was stable this long [env VITSEARCH_WATCH_QUIET_SECONDS].",
)
@click.option(
    "--rescan-seconds",
    "watch_rescan_seconds",
    type=float,
    help="Full re-walk period [env VITSEARCH_WATCH_RESCAN_SECONDS].",
)
@click.option("--batch-size", type=int, help="Images per model forward [env VITSEARCH_BATCH_SIZE].")
@click.option(
    "--threads",
    "watch_threads",
    type=int,
    help="Torch threads, 0 to adapt to the machine's load [env VITSEARCH_WATCH_THREADS; 0].",
)
@library_options(log_level=logging.INFO)
def watch(settings: Settings, paths: tuple[Path, ...]) -> None:
    """Index PATHS, then keep the library in step with them until stopped (SIGTERM/Ctrl-C)."""
    with open_app(settings, write=True) as writer:
        state = writer.watch(paths, on_start=_stop_on_signals)
    totals = state.totals
    click.echo(
        f"stopped: {totals.new} new, {totals.updated} updated, {totals.moved} moved, "
        f"{totals.removed} removed, {totals.failed} failed while watching"
    )


def _stop_on_signals(watcher) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: watcher.stop())
    log.info("watching %s (stop with Ctrl-C or SIGTERM)", ", ".join(map(str, watcher.roots)))


@main.command()
@click.argument("image", type=EXISTING_FILE, required=False)
@click.option("--label", help="Find photos by label instead (e.g. 'cat', 'golden retriever').")
@click.option("-k", type=RESULTS, default=10, show_default=True, help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@filter_options
@library_options()
def search(
    settings: Settings,
    image: Path | None,
    label: str | None,
    k: int,
    as_json: bool,
    filters: Filters,
) -> None:
    """Photos that look like IMAGE (any image file, indexed or not), or that carry --label."""
    if (image is None) == (label is None):
        raise click.UsageError("give either IMAGE or --label TEXT")
    with open_app(settings) as reader:
        if label is not None:
            hits = reader.search_label(label, k, filters)
        else:
            hits = reader.search_image(image, k, filters)
    _print_hits(hits, as_json)


@main.command()
@click.argument("path", type=EXISTING_FILE)
@click.option("-k", type=RESULTS, default=10, show_default=True, help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@filter_options
@library_options()
def similar(settings: Settings, path: Path, k: int, as_json: bool, filters: Filters) -> None:
    """More photos like PATH, an indexed photo (itself excluded)."""
    with open_app(settings) as reader:
        _print_hits(reader.similar(path, k, filters), as_json)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_options()
def labels(settings: Settings, as_json: bool) -> None:
    """The labels in the library, with how many photos carry each."""
    with open_app(settings) as reader:
        counts = reader.labels()
    if as_json:
        click.echo(json.dumps([c.as_dict() for c in counts], indent=2))
        return
    if not counts:
        click.echo("no labels: the model has no classifier; teach some with: vitsearch teach DIR")
    for c in counts:
        click.echo(f"{c.top:>7} top  {c.anywhere:>7} any  {display_label(c.label)}")


@main.command()
@click.option("--k", "k", default="auto", show_default=True, help="Number of clusters, or auto.")
@click.option("--recompute", is_flag=True, help="Recompute even if stored clusters are fresh.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_options()
def clusters(settings: Settings, k: str, recompute: bool, as_json: bool) -> None:
    """Group the library into clusters of look-alike photos, without any labels."""
    if k != "auto" and not (k.isdigit() and int(k) >= 1):
        raise click.BadParameter("--k takes a whole number of at least 1, or 'auto'")
    with open_app(settings) as reader:
        found = reader.clusters(k if k == "auto" else int(k), recompute)
    if as_json:
        click.echo(json.dumps([_cluster_dict(c) for c in found], indent=2))
        return
    for c in found:
        size = counted(c.size, "photo")
        click.echo(f"#{c.id:<4} {size:>12}  cohesion {c.cohesion:.2f}  {c.name}")
        for hit in c.representatives[:3]:
            click.echo(f"        {hit.path}")


@main.command()
@click.option(
    "--kind",
    type=click.Choice(["exact", "near", "burst"]),
    multiple=True,
    help="Which tier(s) [default: all three].",
)
@click.option(
    "--threshold",
    type=float,
    help="Cosine cut for the one --kind given (near: for copies whose hash moved, e.g. crops).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_options()
def duplicates(
    settings: Settings, kind: tuple[str, ...], threshold: float | None, as_json: bool
) -> None:
    """Exact copies, near-duplicates and bursts, with the photo to keep. Deletes nothing."""
    with open_app(settings) as reader:
        groups = reader.duplicates(kind or ("exact", "near", "burst"), threshold)
    if as_json:
        click.echo(json.dumps([g.as_dict() for g in groups], indent=2))
        return
    if not groups:
        click.echo("no duplicates found")
    for group in groups:
        bits = "" if group.hash_bits is None else f", hash {group.hash_bits} bits apart"
        click.echo(
            f"{group.kind} ({counted(len(group.members), 'photo')}, "
            f"similarity {group.similarity:.3f}{bits})"
        )
        for p in group.members:
            mark = "keep" if p.id == group.keeper.id else "    "
            click.echo(f"  {mark} {p.width}x{p.height} {p.size:>10} B  {p.path}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=EXISTING_FILE)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_options()
def classify(settings: Settings, images: tuple[Path, ...], as_json: bool) -> None:
    """The model's top-5 labels for each of IMAGES."""
    with open_app(settings) as reader:
        results = reader.classify(images)
    if as_json:
        click.echo(json.dumps([{"path": p, "labels": _labels(ls)} for p, ls in results], indent=2))
        return
    for path, labels in results:
        click.echo(f"{path}: {_label_text(labels) or '(this model has no labels)'}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@library_options()
def status(settings: Settings, as_json: bool) -> None:
    """What the library holds and which model built it."""
    with open_app(settings) as reader:
        found = reader.status()
    info = found.as_dict()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "folders":
            value = (
                ", ".join(f["path"] + ("" if f["online"] else " (offline)") for f in value) or "-"
            )
        click.echo(f"{key:>17}: {value if value is not None else '-'}")
    if found.empty:
        click.echo("the library is empty; index some photos with: vitsearch index FOLDER")


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@library_options()
def forget(settings: Settings, folder: Path) -> None:
    """Remove FOLDER's photos from the library (the files are not touched)."""
    with open_app(settings, write=True) as writer:
        removed = writer.forget_folder(folder)
    click.echo(f"removed {counted(removed, 'photo')} under {folder}")


@main.command("rebuild-index")
@library_options()
def rebuild_index(settings: Settings) -> None:
    """Rebuild the FAISS index from the database (no model work)."""
    with open_app(settings, write=True) as writer:
        click.echo(f"rebuilt the vector index: {writer.rebuild_vectors()} vectors")


@main.command()
@click.option("--from", "source", required=True, metavar="HOME|URL", help="The library to copy.")
@click.option(
    "--to", "dest", required=True, metavar="HOME|URL", help="An empty library to copy it into."
)
@library_options()
def migrate(settings: Settings, source: str, dest: str) -> None:
    """Copy a library between a home folder and PostgreSQL, either way (no model work)."""
    done = migrate_library(settings, source, dest)
    click.echo(
        f"copied {counted(done.photos, 'photo')} ({counted(done.vectors, 'vector')}, "
        f"{counted(done.labels, 'label')}, {counted(done.classifiers, 'taught classifier')}) "
        f"from {done.source} to {done.dest}"
    )


@main.command()
@click.argument("folder", type=click.Path(path_type=Path), required=False)
@click.option("--name", help="Name of the classifier [default: the folder's name].")
@click.option("--list", "show", is_flag=True, help="List the taught classifiers.")
@click.option("--remove", metavar="NAME", help="Remove a taught classifier and its labels.")
@library_options()
def teach(
    settings: Settings, folder: Path | None, name: str | None, show: bool, remove: str | None
) -> None:
    """Teach your own labels from FOLDER (one sub-folder of examples per label)."""
    if show:
        with open_app(settings) as reader:
            taught = reader.taught()
        if not taught:
            click.echo("no taught labels yet; teach some with: vitsearch teach DIR")
        for c in taught:
            accuracy = "-" if c.accuracy is None else f"{c.accuracy:.0%}"
            click.echo(f"{c.name}: {', '.join(c.classes)} (held-out accuracy {accuracy})")
        return
    if remove:
        with open_app(settings, write=True) as writer:
            writer.forget_taught(remove)
        click.echo(f"removed {remove} and its labels")
        return
    if folder is None:
        raise click.UsageError("give FOLDER, --list or --remove NAME")
    with open_app(settings, write=True) as writer:
        click.echo("\n".join(writer.teach(folder, name).report()))


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="FILE.npy (paths in FILE.txt beside it) or FILE.parquet.",
)
@layer_option
@pool_option
@click.option("--batch-size", type=int, help="Images per model forward.")
@library_options()
def embed(settings: Settings, inputs: tuple[Path, ...], out: Path) -> None:
    """Embeddings of image files (or every photo in folders) from any layer, to a file."""
    with open_app(settings) as reader:
        count, written = reader.embed_to_file(inputs, out)
    click.echo(f"{count} embeddings -> {', '.join(map(str, written))}")


@main.command()
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the fine-tuned checkpoint; run again to resume.",
)
@click.option(
    "--freeze-layers",
    type=int,
    help="Train the last N encoder layers and a new head; the rest stay frozen [2].",
)
@click.option("--epochs", type=int, help="Passes over the training photos [10].")
@click.option("--grad-accum", type=int, help="Batches whose gradients make one step [1].")
@click.option("--lr", type=float, help="Peak learning rate, reached after warmup [2e-4].")
@click.option("--batch-size", "train_batch_size", type=int, help="Photos per training batch [16].")
@click.option("--patience", type=int, help="Stop after N epochs without a better validation [3].")
@click.option("--seed", type=int, help="Seeds the split, shuffling, augmentation and head [0].")
@click.option("--threads", type=int, help="Torch threads [env VITSEARCH_THREADS].")
@library_options()
def finetune(
    settings: Settings, data_dir: Path, out_dir: Path, train_batch_size: int | None, **options
) -> None:
    """Fine-tune the model on DATA_DIR: one sub-folder of example photos per label."""
    try:
        result = finetune_model(
            settings,
            data_dir,
            out_dir,
            progress=sys.stderr.isatty(),
            batch_size=train_batch_size,
            **options,
        )
    except KeyboardInterrupt:
        click.echo(
            "interrupted: run the same command again to resume after the last epoch", err=True
        )
        sys.exit(130)
    click.echo(result.line())
    click.echo(f"use it with: vitsearch index PATH... --model {result.out_dir}")


@main.command()
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "openvino"]),
    default="onnx",
    show_default=True,
    help="onnx: model.onnx for ONNX Runtime; openvino: model.xml/.bin for OpenVINO.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for the model, its manifest and the processor config.",
)
@click.option(
    "--quantize",
    type=click.Choice(["int8"]),
    help="int8 weights: ONNX Runtime dynamic quantization, or NNCF weight compression.",
)
@click.option("--threads", type=int, help="Torch threads [env VITSEARCH_THREADS].")
@layer_option
@pool_option
@library_options()
def export(settings: Settings, fmt: str, out: Path, quantize: str | None) -> None:
    """Export the model to ONNX or OpenVINO (dynamic batch), checked against PyTorch first."""
    manifest = export_model(settings, out, quantize, fmt)
    check = manifest.verification
    click.echo(
        f"wrote {out} ({manifest.backend} {manifest.precision}): min cosine "
        f"{check['min_cosine']:.5f} to PyTorch fp32 over {check['images']} probe images"
    )


@main.command("map")
@click.option("--out", type=click.Path(path_type=Path), help="Write an interactive HTML scatter.")
@click.option(
    "--method",
    type=click.Choice(["auto", "umap", "pca"]),
    default="auto",
    show_default=True,
    help="auto: UMAP when umap-learn is installed, else PCA.",
)
@click.option("--refit", is_flag=True, help="Fit the projection again instead of reusing it.")
@click.option("--json", "as_json", is_flag=True, help="Print every photo's x, y and cluster.")
@library_options()
def map_command(
    settings: Settings, out: Path | None, method: str, refit: bool, as_json: bool
) -> None:
    """A 2-D map of the library, coloured by cluster (HTML with --out)."""
    with open_app(settings) as reader:
        reader.check_map_out(out)
        rows, written = reader.map_rows(reader.map_points(method, refit), out)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif written is None:
        click.echo(f"{counted(len(rows), 'photo')} on the map; use --out map.html to see it")
    if written is not None:
        click.echo(f"wrote {written} ({counted(len(rows), 'photo')})", err=as_json)


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. Anything but loopback shows your library to the network.",
)
@click.option("--port", default=8501, show_default=True, help="Port to listen on.")
@library_options()
def ui(settings: Settings, host: str, port: int) -> None:
    """Open the app in your browser: search by photo, clusters, duplicates, map, library."""
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: listening on {host}: anyone who can reach this machine can browse "
            "your photo library",
            err=True,
        )
    click.echo(f"vitsearch: http://{'localhost' if host == '127.0.0.1' else host}:{port}", err=True)
    launch.run_ui(settings, host, port)


def _cluster_dict(c: Cluster) -> dict:
    return {
        "id": c.id,
        "name": c.name,
        "size": c.size,
        "cohesion": round(c.cohesion, 6),
        "representatives": [hit.as_dict() for hit in c.representatives],
    }


def _print_hits(hits: list[Hit], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([hit.as_dict() for hit in hits], indent=2))
        return
    if not hits:  # an empty library or filters that pass nothing were said before the search
        click.echo("no results")
    for hit in hits:
        offline = " [offline]" if not hit.online else ""
        click.echo(f"{hit.score:.3f}  {hit.path}{offline}  {_label_text(hit.labels[:2])}")


def _labels(labels: tuple[Label, ...]) -> list[dict]:
    return [label.as_dict() for label in labels]


def _label_text(labels: tuple[Label, ...]) -> str:
    return ", ".join(f"{display_label(label.label)} ({label.score:.0%})" for label in labels)


def _setup_logging(level: int, everything: bool = False) -> None:
    """Our loggers at ``level``; other libraries' at WARNING (ERROR with -q) unless
    ``everything`` (--debug): under -v alone PIL would log every TIFF tag it reads, and
    onnx_ir/onnxscript/onnxruntime every pass of an export."""
    verbose = everything or level <= logging.DEBUG
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(logging.DEBUG if everything else max(level, logging.WARNING))
    logging.getLogger("vitsearch").setLevel(logging.DEBUG if everything else level)
