"""Which backend and precision run the model: asked for, or the fastest the hardware has.

ViT-B/16 images/s relative to torch fp32 (benchmarks/bench_backends.py; 2-core machines):

    CPU                               torch bf16    ONNX Runtime int8
    Intel with AMX                    ~4.2-4.5x     ~2.2x
    AMD Zen 4 (AVX512-bf16, no AMX)   ~3.5x         ~5x
    AVX2 only                         ~1/7x         ~1.4-1.7x

So ``auto`` means: CUDA: torch fp16; Apple MPS: torch fp32; a CPU with AMX: torch bf16; any
other CPU: ONNX Runtime int8, on an export made and verified (cosine >= 0.99 to fp32) once
per checkpoint in the library home; without the ``onnx`` extra, or when that export misses
the tolerance: torch bf16 where the CPU has bf16 instructions, else fp32.

OpenVINO is never picked by ``auto``: on the AMX CPU measured it trails torch bf16 (fp32
1.1x, bf16 3.8x), so it runs only when asked for with ``--backend openvino`` or when the model
named is an OpenVINO export directory.

A library keeps the backend it was built with: ``auto`` follows the recorded one, so moving
a library to another machine never mixes embeddings from two backends.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vitsearch.config import Settings
from vitsearch.errors import ConfigError
from vitsearch.model.embedder import Embedder, Features
from vitsearch.model.hardware import choose_device, choose_precision, cpu_flags
from vitsearch.model.loader import checkpoint_fingerprint, load_embedder, resolve_checkpoint
from vitsearch.model.onnx_backend import (
    MANIFEST_FILE,
    ExportedEmbedder,
    load_exported,
    open_export,
    read_manifest,
)
from vitsearch.records import OTHER_BACKENDS, ModelInfo

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

TORCH = "torch"
ONNX = "onnx"
OPENVINO = "openvino"
# what made a library's embeddings (ModelInfo.backend, "<backend>-<precision>") -> how to make
# more of them; "auto" precision: torch fp32, bf16 and fp16 agree, so the fastest of them
RECORDED_BACKENDS = {
    "torch": (TORCH, "auto"),
    **{suffix: tuple(suffix.split("-")) for suffix in OTHER_BACKENDS},
}

EXPORTS_FOLDER = "exports"
ONNX_PRECISIONS = ("int8", "fp32")
AMX_BF16 = "amx_bf16"


@dataclass(frozen=True)
class Runtime:
    backend: str  # torch | onnx | openvino
    device: str
    precision: str
    reason: str  # why, for the log and `status`


def choose_runtime(
    backend: str,
    precision: str,
    device: str,
    *,
    export: str | None = None,
    recorded: ModelInfo | None = None,
    flags: frozenset[str] | None = None,
    onnx_installed: bool | None = None,
) -> Runtime:
    """The backend, device and precision to load a checkpoint with.

    Args:
        backend, precision, device: as asked (``auto`` or a choice).
        export: the backend of the ``vitsearch export`` directory named as the model
            (``onnx`` or ``openvino``); None for a checkpoint.
        recorded: the library's model, if it has one.
        flags: the CPU flags (read from the machine when None).
        onnx_installed: whether the `onnx` extra is installed (checked when None).
    """
    if backend in (ONNX, OPENVINO) or (backend == "auto" and export is not None):
        # an export fixes its precision; "auto" takes it
        chosen = export if backend == "auto" else backend
        return Runtime(chosen, "cpu", precision, f"an {chosen} export" if export else "asked for")
    flags = cpu_flags() if flags is None else flags
    if backend == TORCH or precision != "auto":
        device = choose_device(device)
        return Runtime(TORCH, device, choose_precision(precision, device, flags), "asked for")
    if recorded is not None:
        chosen, recorded_precision = RECORDED_BACKENDS[recorded.backend]
        if recorded_precision != "auto":
            return Runtime(chosen, "cpu", recorded_precision, "the library was built with it")
        device = choose_device(device)  # torch fp32/bf16/fp16 agree: the fastest of them
        return Runtime(TORCH, device, choose_precision("auto", device, flags), "the library's")
    device = choose_device(device)
    if device != "cpu":
        return Runtime(TORCH, device, choose_precision("auto", device), f"a {device} device")
    if AMX_BF16 in flags:
        return Runtime(TORCH, "cpu", "bf16", "a CPU with AMX: torch bf16 is the fastest")
    if onnx_available() if onnx_installed is None else onnx_installed:
        return Runtime(ONNX, "cpu", "int8", "a CPU without AMX: ONNX Runtime int8 is the fastest")
    fallback = choose_precision("auto", "cpu", flags)
    return Runtime(
        TORCH, "cpu", fallback, "no AMX and no onnx extra (pip install 'vitsearch[onnx]')"
    )


def onnx_available() -> bool:
    """What the automatic export needs: the `onnx` extra (torch's exporter uses onnxscript)."""
    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxruntime", "onnxscript"))


def load_model(
    settings: Settings, recorded: ModelInfo | None = None
) -> Embedder | ExportedEmbedder:
    """The embedder for ``settings.model`` on the runtime :func:`choose_runtime` picks."""
    export = export_backend(settings.model)
    runtime = choose_runtime(
        settings.backend,
        settings.precision,
        settings.device,
        export=export,
        recorded=recorded,
    )
    log.info(
        "model runs on %s %s %s: %s",
        runtime.backend,
        runtime.device,
        runtime.precision,
        runtime.reason,
    )
    if runtime.backend == TORCH:
        return load_embedder(settings.replace(device=runtime.device, precision=runtime.precision))
    if export is not None:
        return load_exported(settings, runtime.backend)
    if runtime.backend == OPENVINO:
        # Made only on request, never behind the user's back: see the module docstring.
        raise ConfigError(
            f"the openvino backend runs an OpenVINO export, and {settings.model} is not one; "
            f"create it with: vitsearch export --format openvino --out DIR, then use --model DIR"
        )
    precision = "int8" if runtime.precision == "auto" else runtime.precision
    if precision not in ONNX_PRECISIONS:
        raise ConfigError(f"ONNX Runtime runs {' or '.join(ONNX_PRECISIONS)}, not {precision}")
    return _exported(settings, precision)


def export_backend(model: str) -> str | None:
    """``onnx`` or ``openvino`` when ``model`` is a ``vitsearch export`` directory, else None."""
    directory = Path(model).expanduser()
    if not (directory / MANIFEST_FILE).is_file():
        return None
    return read_manifest(directory, require_verified=False).backend  # loading checks the rest


def _exported(settings: Settings, precision: str) -> Embedder | ExportedEmbedder:
    """The checkpoint on ONNX Runtime, from an export made once and kept in the home; torch
    (bf16 where the CPU has it, else fp32) when that export cannot stay within tolerance
    (remembered, not retried)."""
    from vitsearch.model.export import BackendMismatchError, export_onnx

    directory = export_directory(settings, precision)
    rejected = directory.with_name(directory.name + ".rejected.json")
    fp32 = settings.replace(backend=TORCH, device="cpu", precision="fp32")
    fallback = settings.replace(
        backend=TORCH, device="cpu", precision=choose_precision("auto", "cpu", cpu_flags())
    )
    with _held(directory.with_name(directory.name + ".lock")):  # the app and `watch` alike
        if rejected.is_file():
            return load_embedder(fallback)
        if not (directory / MANIFEST_FILE).is_file():
            log.warning(
                "first run of %s on this CPU: exporting it to ONNX %s, once (ViT-B: ~15 s)",
                settings.model,
                precision,
            )
            quantize = None if precision == "fp32" else precision
            try:
                export_onnx(load_embedder(fp32), directory, quantize=quantize)
            except BackendMismatchError as exc:
                log.warning("using torch %s instead: %s", fallback.precision, exc)
                rejected.write_text(json.dumps({"reason": str(exc)}) + "\n")
                return load_embedder(fallback)
    return open_export(directory, settings.threads, name=settings.model)


@contextmanager
def _held(lock: Path) -> Iterator[None]:
    """An exclusive lock on ``lock`` for the block, waiting for another process's."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        if fcntl is not None:  # elsewhere (Windows) two first runs may both export: harmless
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def export_directory(settings: Settings, precision: str) -> Path:
    """Where the home keeps the automatic export of this checkpoint, layer and pooling."""
    features = Features(settings.layer, settings.pool)
    source = checkpoint_fingerprint(resolve_checkpoint(settings.model)) + features.tag()
    key = hashlib.sha256(source.encode()).hexdigest()[:16]
    return settings.home / EXPORTS_FOLDER / f"{key}-{precision}"
