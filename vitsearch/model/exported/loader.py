"""Opening a ``vitsearch export`` directory on its backend, by its manifest: ONNX Runtime or
OpenVINO.

This module stands above both backends, which are leaves that never import each other, and
imports neither torch nor transformers: a library that runs an export answers a query
without them (exporting and verifying, which need torch, are
:mod:`vitsearch.model.pytorch.exporter`'s).
"""

from __future__ import annotations

from pathlib import Path

from vitsearch.errors import ConfigError
from vitsearch.model.exported.manifest import ExportedEmbedder, ExportManifest, read_manifest
from vitsearch.model.exported.onnx_backend import open_onnx
from vitsearch.model.exported.openvino_backend import open_openvino
from vitsearch.model.features import DEFAULT_FEATURES, Features


def load_onnx_embedder(
    model: str,
    *,
    threads: int,
    precision: str = "auto",
    device: str = "auto",
    features: Features = DEFAULT_FEATURES,
) -> ExportedEmbedder:
    """The ONNX export directory ``model`` on ONNX Runtime (see :func:`load_exported`)."""
    return load_exported(
        model,
        threads=threads,
        backend="onnx",
        precision=precision,
        device=device,
        features=features,
    )


def load_exported(
    model: str,
    *,
    threads: int,
    backend: str | None = None,
    precision: str = "auto",
    device: str = "auto",
    features: Features = DEFAULT_FEATURES,
) -> ExportedEmbedder:
    """The export directory ``model`` on its backend, with ``threads``.

    Args:
        model: the export directory, as named (the name a library records).
        threads: the runtime's intra-op threads.
        backend: ``onnx`` or ``openvino`` when asked for (the export must be of it); ``None``
            takes the export's own.
        precision, device, features: as asked: ``precision`` must be ``auto`` or the export's
            own, ``device`` ``auto`` or ``cpu``, and ``features`` the defaults or the
            export's: an export fixes them.
    """
    if device not in ("auto", "cpu"):
        raise ConfigError(f"exports run on the CPU; use --device cpu, not {device}")
    directory = Path(model).expanduser()
    manifest = read_manifest(directory)
    if backend not in (None, manifest.backend):
        raise ConfigError(
            f"export {model} is for {manifest.backend}, not {backend}; "
            f"use --backend {manifest.backend} (or auto) with it"
        )
    embedder = _open(directory, manifest, threads, model)
    if precision not in ("auto", embedder.precision):
        raise ConfigError(
            f"export {model} is {embedder.precision}, not {precision}; "
            f"use --precision auto or export again with the precision you want"
        )
    _check_features(model, features, embedder)
    return embedder


def _check_features(model: str, asked: Features, embedder: ExportedEmbedder) -> None:
    """Default --layer/--pool take the export's own; others must match what it baked in."""
    if not asked.default and asked != embedder.features:
        made = embedder.features
        raise ConfigError(
            f"export {model} embeds layer {made.layer} with {made.pool} pooling, not "
            f"layer {asked.layer} with {asked.pool}; export again with the --layer/--pool you want"
        )


def open_export(
    directory: Path, threads: int, name: str | None = None, *, require_verified: bool = True
) -> ExportedEmbedder:
    """An embedder over an export directory (ONNX or OpenVINO), checked to be complete.

    Args:
        directory: the export directory.
        threads: the runtime's intra-op threads.
        name: the model name a library records (default: the directory).
        require_verified: refuse an export whose agreement with PyTorch was never shown;
            only the verification itself opens one that is not yet.
    """
    manifest = read_manifest(directory, require_verified=require_verified)
    return _open(directory, manifest, threads, name or str(directory))


def _open(directory: Path, manifest: ExportManifest, threads: int, name: str) -> ExportedEmbedder:
    opener = open_openvino if manifest.backend == "openvino" else open_onnx
    return opener(directory, manifest, threads, name)
