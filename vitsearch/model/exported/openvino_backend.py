"""An OpenVINO export run by the OpenVINO runtime, behind the same interface as :class:`Embedder`.

An OpenVINO export directory holds ``model.xml``/``model.bin`` (the IR converted from the same
graph as the ONNX export; int8 with NNCF weight compression), the checkpoint's
``preprocessor_config.json`` and the manifest :mod:`.manifest` reads. Its embeddings are
fingerprinted ``+openvino-fp32`` or ``+openvino-int8``. ``openvino`` is imported only here and
only when such an export is opened. A leaf below :mod:`.manifest`, like :mod:`.onnx_backend`;
neither imports the other.
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
    import openvino
    import transformers

XML_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
OPENVINO_INSTALL_HINT = "install it with: python3 -m pip install 'vitsearch[openvino]'"


class OpenVinoEmbedder(ExportedEmbedder):
    """An exported checkpoint compiled by OpenVINO for the CPU; a drop-in for :class:`Embedder`."""

    def __init__(
        self,
        compiled: openvino.CompiledModel,
        processor: PlainPixels | transformers.BaseImageProcessor,
        manifest: ExportManifest,
        name: str,
    ) -> None:
        outputs = [output.get_any_name() for output in compiled.outputs]
        super().__init__(processor, manifest, name, outputs)
        self._compiled = compiled
        self._request = compiled.create_infer_request()  # embed runs on one thread at a time

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        # share_outputs=False: the request reuses its output buffers on the next batch
        results = self._request.infer({INPUT_NAME: pixels}, share_outputs=False)
        return {name: results[self._compiled.output(name)] for name in self._outputs}


def open_openvino(
    directory: Path, manifest: ExportManifest, threads: int, name: str
) -> OpenVinoEmbedder:
    """The IR in ``directory`` compiled for the CPU with ``threads`` inference threads."""
    ov = require_openvino()
    xml = directory / XML_FILE
    if not xml.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise ModelNotAvailableError(
            f"export {directory} has no {XML_FILE} and {WEIGHTS_FILE}; {EXPORT_HINT}"
        )
    config = {
        "INFERENCE_NUM_THREADS": threads,
        # On bf16 CPUs OpenVINO would otherwise run f32 layers in bf16: the export was
        # verified, and is fingerprinted, as the precision its manifest names.
        "INFERENCE_PRECISION_HINT": "f32",
    }
    try:
        compiled = ov.Core().compile_model(str(xml), "CPU", config)
    except RuntimeError as exc:  # OpenVINO reports a bad IR as a plain RuntimeError
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotAvailableError(
            f"cannot load {xml}: {first_line}; the files are damaged or not OpenVINO IR, "
            f"{EXPORT_HINT}"
        ) from exc
    return OpenVinoEmbedder(compiled, read_processor(directory), manifest, name=name)


def require_openvino() -> ModuleType:
    """The openvino module, or a one-line error naming the extra to install."""
    try:
        import openvino
    except ImportError as exc:
        raise ConfigError(f"the openvino backend needs openvino; {OPENVINO_INSTALL_HINT}") from exc
    return openvino
