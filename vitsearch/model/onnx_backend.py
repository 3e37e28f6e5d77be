"""Export directories, and an ONNX export run through ONNX Runtime behind :class:`Embedder`'s
interface.

An export directory (made by :mod:`vitsearch.model.export`) holds the model (``model.onnx``,
or ``model.xml``/``.bin`` for OpenVINO), the checkpoint's ``preprocessor_config.json`` and a
manifest naming the source checkpoint and the format. Its embeddings are fingerprinted
``<source fingerprint>+<backend>-<precision>`` (``+onnx-int8``, ``+openvino-fp32``…), so a
library never mixes them with the PyTorch ones silently. The manifest and what every exported
graph shares (:class:`ExportedEmbedder`) live here; :mod:`.openvino_backend` adds OpenVINO.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import transformers

from vitsearch.config import Settings
from vitsearch.errors import ConfigError, ModelNotAvailableError
from vitsearch.model.embedder import TOP_LABELS, EmbeddingBatch, Features, PixelInput
from vitsearch.records import Label, ModelInfo

if TYPE_CHECKING:
    import onnxruntime

MODEL_FILE = "model.onnx"
PROCESSOR_FILE = "preprocessor_config.json"
MANIFEST_FILE = "vitsearch-export.json"
FORMAT = "vitsearch-onnx"
OPENVINO_FORMAT = "vitsearch-openvino"
FORMAT_BACKENDS = {FORMAT: "onnx", OPENVINO_FORMAT: "openvino"}  # manifest format -> backend
FORMAT_VERSION = 1
INPUT_NAME = "pixel_values"
EMBEDDING_OUTPUT = "embedding"
LOGITS_OUTPUT = "logits"
EXPORT_HINT = "create it with: vitsearch export --format onnx (or openvino) --out DIR"
# vitsearch depends on these: missing, the install is incomplete
INSTALL_HINT = "install it with: python3 -m pip install onnxruntime onnx onnxscript"


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

    @property
    def fingerprint(self) -> str:
        """The fingerprint a library records for this export's embeddings."""
        return backend_fingerprint(self.source_fingerprint, f"{self.backend}-{self.precision}")

    def to_json(self) -> str:
        data = asdict(self)
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ExportManifest:
        """The manifest from its parsed JSON (label ids come back as ints)."""
        id2label = {int(k): v for k, v in (data.get("id2label") or {}).items()}
        return cls(**{**data, "id2label": id2label})


def backend_fingerprint(source_fingerprint: str, backend: str) -> str:
    """``sha256:…+onnx-int8``: same checkpoint, another backend, so a store tells them apart."""
    return f"{source_fingerprint}+{backend}"


class ExportedEmbedder(PixelInput):
    """What every exported graph shares: its manifest, the checkpoint's preprocessing, and its
    outputs turned into an :class:`EmbeddingBatch`; a subclass only runs the graph.

    ``preprocess`` is safe to call from decode threads; ``embed`` runs the graph.
    """

    device = "cpu"

    def __init__(
        self,
        processor: transformers.BaseImageProcessor,
        manifest: ExportManifest,
        name: str,
        outputs: Sequence[str],
    ) -> None:
        self.manifest = manifest
        self.precision = manifest.precision
        self.features = Features(**manifest.features)  # baked into the graph at export
        self.info = ModelInfo(
            name=name,
            fingerprint=manifest.fingerprint,
            dim=manifest.dim,
            preprocessing=manifest.preprocessing,
        )
        self._processor = processor
        self._outputs = list(outputs)

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
        logits = logits.astype(np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :TOP_LABELS]
        id2label = self.manifest.id2label
        return [
            tuple(Label(id2label.get(int(i), str(int(i))), float(row[i])) for i in indices)
            for row, indices in zip(probs, top, strict=True)
        ]


class OnnxEmbedder(ExportedEmbedder):
    """An exported checkpoint run by ONNX Runtime on the CPU; a drop-in for :class:`Embedder`."""

    def __init__(
        self,
        session: onnxruntime.InferenceSession,
        processor: transformers.BaseImageProcessor,
        manifest: ExportManifest,
        name: str,
    ) -> None:
        super().__init__(processor, manifest, name, [o.name for o in session.get_outputs()])
        self._session = session

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        results = self._session.run(self._outputs, {INPUT_NAME: pixels})
        return dict(zip(self._outputs, results, strict=True))


def load_onnx_embedder(settings: Settings) -> OnnxEmbedder:
    """The ONNX export directory ``settings.model`` on ONNX Runtime (see :func:`load_exported`)."""
    return load_exported(settings, "onnx")


def load_exported(settings: Settings, backend: str | None = None) -> ExportedEmbedder:
    """The export directory ``settings.model`` on its backend, with ``settings.threads``.

    Args:
        settings: ``precision`` must be ``auto`` or the export's own, ``device`` ``auto`` or
            ``cpu``, and ``layer``/``pool`` the defaults or the export's: an export fixes them.
        backend: ``onnx`` or ``openvino`` when asked for (the export must be of it); ``None``
            takes the export's own.
    """
    if settings.device not in ("auto", "cpu"):
        raise ConfigError(f"exports run on the CPU; use --device cpu, not {settings.device}")
    directory = Path(settings.model).expanduser()
    manifest = read_manifest(directory)
    if backend not in (None, manifest.backend):
        raise ConfigError(
            f"export {settings.model} is for {manifest.backend}, not {backend}; "
            f"use --backend {manifest.backend} (or auto) with it"
        )
    embedder = _open(directory, manifest, settings.threads, settings.model)
    if settings.precision not in ("auto", embedder.precision):
        raise ConfigError(
            f"export {settings.model} is {embedder.precision}, not {settings.precision}; "
            f"use --precision auto or export again with the precision you want"
        )
    _check_features(settings, embedder)
    return embedder


def _check_features(settings: Settings, embedder: ExportedEmbedder) -> None:
    """Default --layer/--pool take the export's own; others must match what it baked in."""
    asked = Features(settings.layer, settings.pool)
    if not asked.default and asked != embedder.features:
        made = embedder.features
        raise ConfigError(
            f"export {settings.model} embeds layer {made.layer} with {made.pool} pooling, not "
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
    if manifest.backend == "openvino":
        from vitsearch.model.openvino_backend import open_openvino  # imports openvino late

        return open_openvino(directory, manifest, threads, name)
    session = _open_session(directory / MODEL_FILE, threads)
    return OnnxEmbedder(session, read_processor(directory), manifest, name=name)


def read_processor(directory: Path) -> transformers.BaseImageProcessor:
    """The checkpoint's image processor, saved in the export directory."""
    try:
        return transformers.AutoImageProcessor.from_pretrained(directory, backend="pil")
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"cannot read the image processor of export {directory}: {exc}; {EXPORT_HINT}"
        ) from exc


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


def _check_format(path: Path, data: dict) -> None:
    """Checked before the fields are read: a newer format may have fields we do not know."""
    kind, version = data.get("format"), data.get("format_version", 0)
    if kind not in FORMAT_BACKENDS or version > FORMAT_VERSION:
        raise ModelNotAvailableError(
            f"{path} is format {kind} v{version}; this vitsearch reads "
            f"{' and '.join(FORMAT_BACKENDS)} up to v{FORMAT_VERSION}: upgrade vitsearch or "
            f"export again"
        )


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
