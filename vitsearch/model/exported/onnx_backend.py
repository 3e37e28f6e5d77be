"""An ONNX export run through ONNX Runtime behind :class:`Embedder`'s interface.

A leaf below :mod:`.manifest` (the manifest and what every exported graph shares); it never
imports the OpenVINO backend, nor it this one.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from vitsearch.errors import ConfigError, ModelNotAvailableError
from vitsearch.model.exported.manifest import (
    EXPORT_HINT,
    INPUT_NAME,
    ExportedEmbedder,
    ExportManifest,
    read_processor,
)
from vitsearch.model.pixels import PlainPixels

if TYPE_CHECKING:
    import onnxruntime
    import transformers

MODEL_FILE = "model.onnx"
# vitsearch depends on these: missing, the install is incomplete
INSTALL_HINT = "install it with: python3 -m pip install onnxruntime onnx onnxscript"


class OnnxEmbedder(ExportedEmbedder):
    """An exported checkpoint run by ONNX Runtime on the CPU; a drop-in for :class:`Embedder`."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        processor: PlainPixels | transformers.BaseImageProcessor,
        manifest: ExportManifest,
        name: str,
    ) -> None:
        super().__init__(processor, manifest, name, [o.name for o in session.get_outputs()])
        self._session = session

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        results = self._session.run(self._outputs, {INPUT_NAME: pixels})
        return dict(zip(self._outputs, results, strict=True))


def open_onnx(directory: Path, manifest: ExportManifest, threads: int, name: str) -> OnnxEmbedder:
    """``model.onnx`` in ``directory`` on ONNX Runtime with ``threads`` intra-op threads."""
    session = _open_session(directory / MODEL_FILE, threads)
    return OnnxEmbedder(session, read_processor(directory), manifest, name=name)


def _open_session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    ort = _onnxruntime()
    if not path.is_file():
        raise ModelNotAvailableError(f"export {path.parent} has no {MODEL_FILE}; {EXPORT_HINT}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one graph, run sequentially: intra-op threads do the work
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: its warnings are about graph internals
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT's errors are pybind classes outside any public hierarchy
        raise ModelNotAvailableError(
            f"cannot load {path}: {str(exc).strip()}; the file is damaged or not ONNX, "
            f"{EXPORT_HINT}"
        ) from exc


def _onnxruntime() -> ModuleType:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"the onnx backend needs onnxruntime; {INSTALL_HINT}") from exc
    return onnxruntime
