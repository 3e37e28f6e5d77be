"""Export directories: the manifest, and what every exported graph shares behind
:class:`Embedder`'s interface.

An export directory (made by :mod:`vitsearch.model.pytorch.exporter`) holds the model
(``model.onnx``, or ``model.xml``/``.bin`` for OpenVINO), the checkpoint's
``preprocessor_config.json`` and a manifest naming the source checkpoint and the format. Its
embeddings are fingerprinted ``<source fingerprint>+<backend>-<precision>`` (``+onnx-int8``,
``+openvino-fp32``…), so a library never mixes them with the PyTorch ones silently. The backends
are leaves below this module: :mod:`.onnx_backend` runs ``model.onnx``, :mod:`.openvino_backend`
the IR; neither imports the other, and :func:`.loader.open_export` picks between them. None of
them imports torch or transformers: the preprocessing comes from the saved config (see
:func:`read_processor`) and the labels from the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitsearch.errors import ModelNotAvailableError, VitsearchError
from vitsearch.model.checkpoint import MANIFEST_FILE, load_processor
from vitsearch.model.features import TOP_LABELS, EmbeddingBatch, Features
from vitsearch.model.pixels import PixelInput, PlainPixels, plain_pixels_from_config
from vitsearch.model.scores import softmax
from vitsearch.records import Label, ModelInfo

if TYPE_CHECKING:
    import transformers

PROCESSOR_FILE = "preprocessor_config.json"
FORMAT = "vitsearch-onnx"
OPENVINO_FORMAT = "vitsearch-openvino"
FORMAT_BACKENDS = {FORMAT: "onnx", OPENVINO_FORMAT: "openvino"}  # manifest format -> backend
FORMAT_VERSION = 1
INPUT_NAME = "pixel_values"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
EXPORT_HINT = "create it with: vitsearch export --format onnx (or openvino) --out DIR"


class BackendMismatchError(VitsearchError, ValueError):
    """Another backend's embeddings differ from PyTorch fp32 beyond the tolerance."""


@dataclass(frozen=True)
class ExportManifest:
    """What an export directory holds and where it came from; saved as JSON beside the model."""

    source_name: str
    source_fingerprint: str
    dim: int
    precision: str  # "fp32" or "int8": what the weights of the exported model are
    opset: int  # of the ONNX graph (an OpenVINO export is converted from it)
    preprocessing: dict
    id2label: dict[int, str]  # empty for a checkpoint without a classification head
    features: dict = field(default_factory=lambda: asdict(Features()))
    quantization: dict | None = None
    verification: dict | None = None  # filled in once the export agreed with PyTorch
    versions: dict = field(default_factory=dict)
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def backend(self) -> str:
        """``onnx`` or ``openvino``: what runs the exported model."""
        return FORMAT_BACKENDS[self.format]

    def model_info(self, name: str) -> ModelInfo:
        """What a library records for this export's embeddings, under the model ``name``."""
        return ModelInfo.made_with(
            name,
            self.source_fingerprint,
            self.dim,
            self.preprocessing,
            backend=self.backend,
            precision=self.precision,
        )

    @property
    def fingerprint(self) -> str:
        """The fingerprint a library records for this export's embeddings."""
        return self.model_info(self.source_name).fingerprint

    def to_json(self) -> str:
        data = asdict(self)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ExportManifest:
        """The manifest from its parsed JSON (label ids come back as ints)."""
        id2label = {int(k): v for k, v in (data.get("id2label") or {}).items()}
        return cls(**{**data, "id2label": id2label})


class ExportedEmbedder(PixelInput):
    """What every exported graph shares: its manifest, the checkpoint's preprocessing, and its
    outputs turned into an :class:`EmbeddingBatch`; a subclass only runs the graph.

    ``preprocess`` is safe to call from decode threads; ``embed`` runs the graph.
    """

    device = "cpu"

    def __init__(
        self,
        processor: PlainPixels | transformers.BaseImageProcessor,
        manifest: ExportManifest,
        name: str,
        outputs: Sequence[str],
    ) -> None:
        self.manifest = manifest
        self.precision = manifest.precision
        self.features = Features(**manifest.features)  # baked into the graph at export
        self.info = manifest.model_info(name)
        self._processor = processor
        self._outputs = list(outputs)

    def set_threads(self, threads: int) -> bool:
        """Its session's threads were fixed when it was made."""
        return False

    @property
    def has_labels(self) -> bool:
        return LOGITS_OUTPUT in self._outputs

    def embed(self, pixels: np.ndarray) -> EmbeddingBatch:
        """(n, 3, H, W) pixels -> unit embeddings and top labels, in one run of the graph."""
        results = self._run(np.ascontiguousarray(pixels, dtype=np.float32))
        vectors = np.asarray(results[EMBEDDING_OUTPUT], dtype=np.float32)
        if LOGITS_OUTPUT not in results:
            return EmbeddingBatch(vectors=vectors, labels=[() for _ in range(len(vectors))])
        return EmbeddingBatch(vectors=vectors, labels=self._top_labels(results[LOGITS_OUTPUT]))

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Output name -> array, for a float32 batch fed as ``INPUT_NAME``."""
        raise NotImplementedError

    def _top_labels(self, logits: np.ndarray) -> list[tuple[Label, ...]]:
        probs = softmax(logits.astype(np.float64))
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :TOP_LABELS]
        id2label = self.manifest.id2label
        return [
            tuple(Label(id2label.get(int(i), str(int(i))), float(row[i])) for i in indices)
            for row, indices in zip(probs, top, strict=True)
        ]


def read_processor(directory: Path) -> PlainPixels | transformers.BaseImageProcessor:
    """The checkpoint's preprocessing, saved in the export directory: the quick path read
    from its config when that is all the processor does (transformers takes seconds to
    import), else the image processor itself."""
    try:
        plain = plain_pixels_from_config(json.loads((directory / PROCESSOR_FILE).read_text()))
    except (OSError, ValueError, TypeError, AttributeError):
        plain = None  # loading the processor says what is wrong with its config
    if plain is not None:
        return plain
    return load_processor(directory, f"export {directory}", f"; {EXPORT_HINT}")


def read_manifest(directory: Path, require_verified: bool = True) -> ExportManifest:
    """The manifest of an export directory; a clear error when it is not one of ours."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ModelNotAvailableError(f"{directory} is not a vitsearch export; {EXPORT_HINT}")
    try:
        data = json.loads(path.read_text())
        _check_format(path, data)
        manifest = ExportManifest.from_dict(data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelNotAvailableError(
            f"unreadable export manifest {path}: {exc}; {EXPORT_HINT}"
        ) from exc
    if require_verified and not (manifest.verification or {}).get("passed"):
        # Only an export that agreed with PyTorch is fit to share a library's semantics.
        raise ModelNotAvailableError(f"export {directory} was never verified; {EXPORT_HINT}")
    return manifest


def export_backend(model: str) -> str | None:
    """``onnx`` or ``openvino`` when ``model`` is a ``vitsearch export`` directory, else None."""
    directory = Path(model).expanduser()
    if not (directory / MANIFEST_FILE).is_file():
        return None
    return read_manifest(directory, require_verified=False).backend  # loading checks the rest


def _check_format(path: Path, data: dict) -> None:
    """Checked before the fields are read: a newer format may have fields we do not know."""
    kind, version = data.get("format"), data.get("format_version", 0)
    if kind not in FORMAT_BACKENDS or version > FORMAT_VERSION:
        raise ModelNotAvailableError(
            f"{path} is format {kind} v{version}; this vitsearch reads "
            f"{' and '.join(FORMAT_BACKENDS)} up to v{FORMAT_VERSION}: upgrade vitsearch or "
            f"export again"
        )
