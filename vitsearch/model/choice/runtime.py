"""Which backend and precision run the model: asked for, or the fastest this machine has,
measured.

``auto`` on a CPU times the candidates that agree with torch fp32 and keeps the fastest: torch
fp32, torch bf16 (where the CPU has bf16 instructions: without them bf16 is ~7x *slower*), ONNX
Runtime fp32 and ONNX Runtime block int8, and OpenVINO with NNCF int8 weights where the
``openvino`` extra is installed; each export is made once per checkpoint in the library home and
verified against torch fp32 on probe images (min cosine and top-10 neighbour overlap, see
:mod:`vitsearch.model.pytorch.exporter`). The measurement takes a few seconds per candidate, is
kept in the home per checkpoint and CPU, and is made again on another CPU, so a new kind of CPU
gets the right answer without a table of names. An export (ONNX Runtime or OpenVINO) within 10%
of the fastest candidate is kept instead of it: a query on a library that runs an export starts
without importing torch, seconds sooner every command, which is worth more than a few percent of
indexing speed (on AVX2-only CPUs torch fp32 and ONNX Runtime fp32 run within 1% of each other).
A timing made while other programs kept more than half a core busy (speeds then swing 2-3x and
the pick flips) is made again at the next start, up to three times. CUDA runs torch fp16, Apple
MPS torch fp32.

OpenVINO fp32 is not timed: it would cost another full-size export, and in
``bench_backends.py`` it was slower than the fastest other candidate on every CPU measured but
AVX2-only ones, where it ran within ~10% of torch fp32 and ONNX Runtime fp32 (figures in
docs/benchmarks.md).

Timing pays only for a large job: exporting and timing cost about a minute on a ViT-B, which
a few hundred photos never win back. So only ``index`` and ``watch`` time, and only when they
are about to embed ``time_from`` photos or more (``VITSEARCH_TIME_BACKENDS_FROM``); a smaller
job, and every other command, runs the fastest already measured for this checkpoint and CPU,
else torch fp32, at once. A library started by a small job is a torch library; the first job
larger than it and than ``time_from`` times every candidate as for a new library and, when
another backend wins, embeds its few photos again with it (:mod:`vitsearch.indexer.backend_move`).

A library keeps the backend it was built with: ``auto`` measures only the backends whose
embeddings agree with the recorded ones (torch fp32 and bf16 agree; an ``onnx-int8`` library
runs ONNX int8), so moving a library to another machine never mixes embeddings.

torch and transformers are imported only when a torch backend runs, or an export has to be
made or checked: a query on a library that runs an export loads the graph, its preprocessing
config and its manifest without them (seconds of imports saved).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitsearch.errors import ConfigError
from vitsearch.machine.busy import OtherProcesses
from vitsearch.machine.fileio import held, write_atomically
from vitsearch.machine.hardware import choose_precision, cpu_flags, cpu_name, has_bf16_hardware
from vitsearch.model.checkpoint import MANIFEST_FILE, checkpoint_fingerprint, resolve_checkpoint
from vitsearch.model.export_request import ONNX_PACKAGES, OPENVINO_PACKAGES
from vitsearch.model.exported.loader import load_exported, open_export
from vitsearch.model.exported.manifest import (
    BackendMismatchError,
    ExportedEmbedder,
    export_backend,
    read_manifest,
)
from vitsearch.model.exported.onnx_backend import MODEL_FILE
from vitsearch.model.features import DEFAULT_FEATURES, Features, ImageEmbedder
from vitsearch.model.pytorch.devices import choose_device
from vitsearch.records import AGREEING, ModelInfo

if TYPE_CHECKING:
    from vitsearch.model.pytorch.embedder import Embedder

log = logging.getLogger(__name__)

TORCH = "torch"
ONNX = "onnx"
OPENVINO = "openvino"

EXPORTS_FOLDER = "exports"
ONNX_PRECISIONS = ("fp32", "int8")  # fp32 first: int8 is quantized from its graph
OPENVINO_PRECISIONS = ("fp32", "int8")  # converted from the ONNX fp32 graph
OPENVINO_TIMED = ("int8",)  # NNCF int8 weights; why not fp32: the module docstring
EXPORT_PRECISIONS = {ONNX: ONNX_PRECISIONS, OPENVINO: OPENVINO_PRECISIONS}
EXPORT_NAMES = {ONNX: "ONNX Runtime", OPENVINO: "OpenVINO"}
MEASURE_SECONDS = 2.0  # per candidate, after a warm-up batch
MEASURE_BATCH = 8
BUSY_WHILE_TIMING = 0.5  # cores other programs kept busy, above which a timing is not trusted
RETIMINGS = 3
EXPORT_WITHIN = 0.9  # an export this close to the fastest candidate is kept: see the docstring
# index/watch time the backends from this many photos to embed (Settings.time_backends_from):
# below it, the minute of exports and timing a ViT-B costs is not won back
TIME_FROM = 500


@dataclass(frozen=True)
class Candidate:
    """One way to run a checkpoint on the CPU."""

    backend: str  # torch | onnx | openvino
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.precision}"


def checkpoint_source(checkpoint: str, features: Features = DEFAULT_FEATURES) -> str:
    """What a library records of ``checkpoint``'s embeddings before any backend's suffix
    (:attr:`ModelInfo.source`), read from its files: another model is refused before the
    seconds of loading it. An export directory's features are baked in; its manifest says."""
    if export_backend(checkpoint) is not None:
        manifest = read_manifest(Path(checkpoint).expanduser(), require_verified=False)
        return manifest.source_fingerprint
    return checkpoint_fingerprint(resolve_checkpoint(checkpoint)) + features.tag()


@dataclass(frozen=True)
class Source:
    """What every way of running a checkpoint shares: the checkpoint, the features asked of it,
    the threads, and the home keeping its exports and timings."""

    checkpoint: str  # hub id or directory, as named
    home: Path
    threads: int
    features: Features = DEFAULT_FEATURES
    batch_size: int = MEASURE_BATCH  # of the timing, at most MEASURE_BATCH

    def fingerprint(self) -> str:
        """The checkpoint's fingerprint with the features' tag, as a torch library records it."""
        return checkpoint_source(self.checkpoint, self.features)

    def torch(self, device: str, precision: str) -> Embedder:
        """The checkpoint in PyTorch on the device and precision decided."""
        from vitsearch.model.pytorch.loader import load_embedder  # torch: seconds to import

        return load_embedder(
            self.checkpoint,
            threads=self.threads,
            device=device,
            precision=precision,
            features=self.features,
        )


@dataclass(frozen=True)
class Runtime:
    backend: str  # torch | onnx | openvino; "auto": the fastest of ``candidates``, measured
    device: str
    precision: str
    reason: str  # why, for the log and `status`
    candidates: tuple[Candidate, ...] = ()


def choose_runtime(
    backend: str,
    precision: str,
    device: str,
    *,
    export: str | None = None,
    recorded: ModelInfo | None = None,
    flags: frozenset[str] | None = None,
    onnx_installed: bool | None = None,
    openvino_installed: bool | None = None,
) -> Runtime:
    """The backend, device and precision to load a checkpoint with, or on a CPU with a
    choice (``backend == "auto"``) the candidates to time.

    Args:
        backend, precision, device: as asked (``auto`` or a choice).
        export: the backend of the ``vitsearch export`` directory named as the model
            (``onnx`` or ``openvino``); None for a checkpoint.
        recorded: the library's model, if it has one.
        flags: the CPU flags (read from the machine when None).
        onnx_installed: whether ONNX export and runtime are installed (checked when None).
        openvino_installed: whether OpenVINO and NNCF are installed (checked when None).
    """
    if backend in (ONNX, OPENVINO) or (backend == "auto" and export is not None):
        # an export fixes its precision; "auto" takes it
        chosen = export if backend == "auto" and export is not None else backend
        return Runtime(chosen, "cpu", precision, f"an {chosen} export" if export else "asked for")
    flags = cpu_flags() if flags is None else flags
    if backend == TORCH or precision != "auto":
        device = choose_device(device)
        return Runtime(TORCH, device, choose_precision(precision, device, flags), "asked for")
    if recorded is not None and recorded.precision != AGREEING:
        return Runtime(recorded.backend, "cpu", recorded.precision, "the library was built with it")
    device = choose_device(device)
    if device != "cpu":
        return Runtime(TORCH, device, choose_precision("auto", device), f"a {device} device")
    onnx_ok = onnx_available() if onnx_installed is None else onnx_installed
    openvino_ok = openvino_available() if openvino_installed is None else openvino_installed
    fresh = recorded is None  # a library's embeddings admit only the backends agreeing with them
    found = cpu_candidates(
        flags, onnx=onnx_ok and fresh, openvino=onnx_ok and openvino_ok and fresh
    )
    if len(found) == 1:
        return Runtime(TORCH, "cpu", found[0].precision, "the only candidate on this CPU")
    why = "the fastest agreeing with the library's embeddings" if recorded else "the fastest here"
    return Runtime("auto", "cpu", "auto", why, found)


def cpu_candidates(
    flags: frozenset[str], onnx: bool, openvino: bool = False
) -> tuple[Candidate, ...]:
    """What is worth timing on this CPU: bf16 only with bf16 hardware, ONNX Runtime and
    OpenVINO when installed."""
    found = [Candidate(TORCH, "fp32")]
    if has_bf16_hardware(flags):
        found.append(Candidate(TORCH, "bf16"))
    if onnx:
        found += [Candidate(ONNX, precision) for precision in ONNX_PRECISIONS]
    if openvino:
        found += [Candidate(OPENVINO, precision) for precision in OPENVINO_TIMED]
    return tuple(found)


def onnx_available() -> bool:
    """What the automatic export needs: onnx, ONNX Runtime, and onnxscript (torch's exporter)."""
    return all(importlib.util.find_spec(name) for name in ONNX_PACKAGES)


def openvino_available() -> bool:
    """What an automatic OpenVINO int8 export needs beside ONNX's: the ``openvino`` extra."""
    return all(importlib.util.find_spec(name) for name in OPENVINO_PACKAGES)


def load_model(
    checkpoint: str,
    *,
    home: Path,
    threads: int,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    features: Features = DEFAULT_FEATURES,
    batch_size: int = MEASURE_BATCH,
    recorded: ModelInfo | None = None,
    photos: int = 0,
    time_from: int = TIME_FROM,
) -> Embedder | ExportedEmbedder:
    """The embedder for ``checkpoint`` on the runtime :func:`choose_runtime` picks.

    Args:
        checkpoint: a hub id, a checkpoint directory or a ``vitsearch export`` directory.
        home: the library home, which keeps automatic exports and timings (``exports/``).
        threads: the backend's intra-op threads.
        backend, precision, device: as asked (``auto`` or a choice).
        features: the layer and pooling asked for.
        batch_size: images per forward; timings use at most ``MEASURE_BATCH``.
        recorded: the library's model, if it has one: its backend is kept.
        photos: how many photos the caller is about to embed (``index``, ``watch``); 0 for
            anything else (a query, ``embed``, ``classify``), which never times.
        time_from: from how many ``photos`` the candidates are timed (again, when a timing
            was made beside a busy program); a smaller job runs the fastest already
            measured, else torch fp32, at once.
    """
    source = Source(checkpoint, home, threads, features, batch_size)
    export = export_backend(checkpoint)
    runtime = choose_runtime(backend, precision, device, export=export, recorded=recorded)
    if runtime.backend == "auto":
        return _fastest(source, runtime, photos, time_from)
    log.info(
        "model runs on %s %s %s: %s",
        runtime.backend,
        runtime.device,
        runtime.precision,
        runtime.reason,
    )
    if runtime.backend == TORCH:
        return source.torch(runtime.device, runtime.precision)
    if export is not None:
        return load_exported(
            checkpoint,
            threads=threads,
            backend=runtime.backend,
            precision=precision,
            device=device,
            features=features,
        )
    return _asked_export(source, runtime)


def _asked_export(source: Source, runtime: Runtime) -> ExportedEmbedder:
    """``--backend onnx`` or ``openvino`` with a checkpoint (or a library built with one): its
    export in the home, made once."""
    backend, allowed = runtime.backend, EXPORT_PRECISIONS[runtime.backend]
    precision = "int8" if runtime.precision == "auto" else runtime.precision
    name = EXPORT_NAMES[backend]
    if precision not in allowed:
        raise ConfigError(f"{name} runs {' or '.join(allowed)} here, not {precision}")
    embedder = _exported(source, precision, backend=backend)
    if embedder is None:
        raise BackendMismatchError(
            f"{name} {precision} of {source.checkpoint} did not agree with torch fp32 on "
            f"this machine (see {_rejected_file(source, precision, backend)}); use --backend "
            f"auto or torch (a library built with {name} {precision} needs a new --home)"
        )
    return embedder


def _fastest(
    source: Source, runtime: Runtime, photos: int, time_from: int
) -> Embedder | ExportedEmbedder:
    """The fastest of the runtime's candidates, from the home's timings for this checkpoint
    and CPU. A job of ``time_from`` photos or more times the candidates now when any of
    them never was, or when they were timed beside a busy program; anything smaller runs
    the fastest timed so far, else torch fp32."""
    may_time = photos >= max(1, time_from)
    path = measurement_file(source)
    record = read_measurement(path)
    results = {r["candidate"]: r for r in record.get("results", [])}
    wanted = [c.name for c in runtime.candidates]
    rates = {
        n: results[n]["images_per_second"]
        for n in wanted
        if "images_per_second" in results.get(n, {})
    }
    timed_all = bool(rates) and all(name in results for name in wanted)
    if may_time and _disturbed(record):
        log.warning(
            "the backends were timed while other programs kept %.1f cores busy: timing again",
            record["busy_cores"],
        )
        return measure(source, runtime.candidates, path)
    if may_time and not timed_all:
        return measure(source, runtime.candidates, path)
    if rates:
        chosen = preferred(rates)
        embedder = _load_candidate(source, _candidate(chosen))
        if embedder is not None:
            log.info("model runs on %s: measured on this CPU", chosen)
            return embedder
    log.info(
        "model runs on torch-fp32 at once: the backends are timed by an index or watch job "
        "of %d photos or more",
        time_from,
    )
    return source.torch("cpu", "fp32")


def measure(
    source: Source,
    candidates: tuple[Candidate, ...],
    path: Path,
    seconds: float = MEASURE_SECONDS,
) -> Embedder | ExportedEmbedder:
    """Load every candidate (exporting once where needed), time them, add the results to the
    timings in ``path`` and return the fastest."""
    log.warning(
        "first run of %s on this CPU (%s): timing %s to keep the fastest, once%s",
        source.checkpoint,
        cpu_name(),
        ", ".join(c.name for c in candidates),
        " (exporting a ViT-B takes about a minute)"
        if any(c.backend != TORCH for c in candidates)
        else "",
    )
    reference = _Reference(source)  # one fp32 model: a candidate and every export's check
    loaded = {c.name: _load_candidate(source, c, reference) for c in candidates}
    usable = {name: embedder for name, embedder in loaded.items() if embedder is not None}
    others = OtherProcesses()
    rates = images_per_second(usable, source.batch_size, seconds)
    busy = others.busy_cores()
    chosen = preferred(rates)
    timed = {
        name: {"candidate": name, "images_per_second": round(rates[name], 3)}
        if name in rates
        else {"candidate": name, "rejected": True}
        for name in loaded
    }
    record = read_measurement(path)
    earlier = {r["candidate"]: r for r in record.get("results", []) if r["candidate"] not in timed}
    write_measurement(
        path,
        [*earlier.values(), *timed.values()],
        source.threads,
        busy=busy,
        timings=record.get("timings", 0) + 1,
    )
    log.warning(
        "model runs on %s, measured here (%s)",
        chosen,
        ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items()) + " images/s",
    )
    return usable[chosen]


def preferred(rates: dict[str, float]) -> str:
    """The candidate to run, from images/s by name: the fastest, or the fastest export when it
    is within ``EXPORT_WITHIN`` of it (queries then start without torch)."""
    fastest = max(rates, key=rates.__getitem__)
    exports = [name for name in rates if _candidate(name).backend != TORCH]
    if exports:
        export = max(exports, key=rates.__getitem__)
        if rates[export] >= EXPORT_WITHIN * rates[fastest]:
            return export
    return fastest


def images_per_second(
    embedders: Mapping[str, ImageEmbedder], batch_size: int, seconds: float
) -> dict:
    """Each embedder's best probe-batch throughput over rounds that take turns (a passing load
    on the machine then slows every candidate alike, not just one), after a warm-up batch;
    at least two rounds, then more until about ``seconds`` per candidate have passed."""
    from vitsearch.model.pytorch.exporter import probe_images

    images = probe_images()[: max(1, min(batch_size, MEASURE_BATCH))]
    pixels = {
        name: np.stack([embedder.preprocess(image) for image in images])
        for name, embedder in embedders.items()
    }
    for name, embedder in embedders.items():
        embedder.embed(pixels[name])
    best = dict.fromkeys(embedders, 0.0)
    rounds, started = 0, time.perf_counter()
    while rounds < 2 or time.perf_counter() - started < seconds * len(embedders):
        for name, embedder in embedders.items():
            began = time.perf_counter()
            embedder.embed(pixels[name])
            best[name] = max(best[name], len(images) / (time.perf_counter() - began))
        rounds += 1
    return best


class _Reference:
    """Torch fp32 of the checkpoint, loaded on first use and then shared: exports are checked
    against it, so its probe forward is computed once (see ``exporter._reference_batch``)."""

    def __init__(self, source: Source) -> None:
        self._source = source
        self._embedder: Embedder | None = None

    def __call__(self) -> Embedder:
        if self._embedder is None:
            self._embedder = self._source.torch("cpu", "fp32")
        return self._embedder


def _load_candidate(
    source: Source, candidate: Candidate, reference: _Reference | None = None
) -> Embedder | ExportedEmbedder | None:
    """The candidate's embedder; None for an ONNX export that failed its check here."""
    reference = reference or _Reference(source)
    if candidate == Candidate(TORCH, "fp32"):
        return reference()
    if candidate.backend == TORCH:
        return source.torch("cpu", candidate.precision)
    return _exported(source, candidate.precision, reference, candidate.backend)


def _candidate(name: str) -> Candidate:
    backend, _, precision = name.partition("-")
    return Candidate(backend, precision)


def measurement_file(source: Source) -> Path:
    """Where the home keeps the backends' timings for this checkpoint on this CPU: another
    CPU (its name or instruction set) or thread count is timed again."""
    identity = "|".join(
        [source.fingerprint(), cpu_name(), ",".join(sorted(cpu_flags())), str(source.threads)]
    )
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return source.home / EXPORTS_FOLDER / f"measured-{key}.json"


def read_measurement(path: Path) -> dict:
    """The record in ``path``: ``results``, one ``{"candidate", "images_per_second"}`` (or
    ``"rejected": True``) each, and how busy the machine was; empty when there is no file or
    it is unreadable."""
    try:
        record = json.loads(path.read_text())
        results = [r for r in record["results"] if isinstance(r, dict) and "candidate" in r]
        return {**record, "results": results}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_measurement(
    path: Path, results: list[dict], threads: int, busy: float | None = None, timings: int = 1
) -> None:
    rates = {r["candidate"]: r["images_per_second"] for r in results if "images_per_second" in r}
    record = {
        "chosen": preferred(rates),
        "cpu": cpu_name(),
        "threads": threads,
        "results": results,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        # cores other programs kept busy meanwhile (None: not known); a busy measurement is
        # made again at the next start, up to RETIMINGS times
        "busy_cores": None if busy is None else round(busy, 2),
        "timings": timings,
    }
    write_atomically(path, json.dumps(record, indent=2) + "\n")


def _disturbed(record: dict) -> bool:
    """Timed beside another busy program (speeds then swing 2-3x), with retries left."""
    busy = record.get("busy_cores")
    return busy is not None and busy > BUSY_WHILE_TIMING and record.get("timings", 1) < RETIMINGS


def _exported(
    source: Source, precision: str, reference: _Reference | None = None, backend: str = ONNX
) -> ExportedEmbedder | None:
    """The checkpoint on ONNX Runtime or OpenVINO, from an export made once and kept in the
    home; None when that export cannot stay within tolerance on this machine (remembered, not
    retried)."""
    directory = export_directory(source, precision, backend)
    rejected = _rejected_file(source, precision, backend)
    with held(directory.with_name(directory.name + ".lock")):  # the app and `watch` alike
        if rejected.is_file():
            return None
        if not (directory / MANIFEST_FILE).is_file():
            from vitsearch.model.pytorch.exporter import export_model  # torch: to export

            name = EXPORT_NAMES[backend]
            log.warning("exporting %s to %s %s, once", source.checkpoint, name, precision)
            # every export starts from the ONNX fp32 graph, when this home already has it
            fp32 = export_directory(source, "fp32") / MODEL_FILE
            reuse = fp32.is_file() and (backend, precision) != (ONNX, "fp32")
            try:
                export_model(
                    (reference or _Reference(source))(),
                    directory,
                    fmt=backend,
                    quantize=None if precision == "fp32" else precision,
                    graph=fp32 if reuse else None,
                )
            except BackendMismatchError as exc:
                log.warning("not using %s %s: %s", name, precision, exc)
                rejected.write_text(json.dumps({"reason": str(exc)}) + "\n")
                return None
    return open_export(directory, source.threads, name=source.checkpoint)


def _rejected_file(source: Source, precision: str, backend: str = ONNX) -> Path:
    directory = export_directory(source, precision, backend)
    return directory.with_name(directory.name + ".rejected.json")


def export_directory(source: Source, precision: str, backend: str = ONNX) -> Path:
    """Where the home keeps the automatic export of this checkpoint, layer and pooling."""
    key = hashlib.sha256(source.fingerprint().encode()).hexdigest()[:16]
    return source.home / EXPORTS_FOLDER / f"{key}-{backend}-{precision}"
