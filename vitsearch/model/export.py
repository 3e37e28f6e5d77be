"""Exporting a loaded checkpoint to ONNX, and checking other backends against PyTorch fp32.

One graph gives what :meth:`Embedder.embed` gives: the unit embedding (of the embedder's
layer and pooling; by default the final CLS token) and, when the checkpoint has a head, the
logits, with a dynamic batch axis. An export is written to a
staging directory, checked against the PyTorch model on seeded probe images, and only then
moved into place: a directory holding a manifest always holds a verified export.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from vitsearch.errors import ConfigError, VitsearchError
from vitsearch.model.embedder import FINAL_LAYER, Embedder, _pool
from vitsearch.model.onnx_backend import (
    EMBEDDING_OUTPUT,
    INPUT_NAME,
    INSTALL_HINT,
    LOGITS_OUTPUT,
    MANIFEST_FILE,
    MODEL_FILE,
    PROCESSOR_FILE,
    ExportManifest,
    OnnxEmbedder,
    open_export,
)

if TYPE_CHECKING:
    import onnx

# Least cosine to PyTorch fp32 each precision must reach: fp32 as bf16 already does, int8
# looser because its activations are rounded to 8 bits per batch.
TOLERANCES = {"fp32": 0.999, "int8": 0.99}
QUANTIZATIONS = ("int8",)
OPSET = 18
PROBE_IMAGES = 8
PROBE_SEED = 0
EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 to keep it dynamic


class BackendMismatchError(VitsearchError, ValueError):
    """Another backend's embeddings differ from PyTorch fp32 beyond the tolerance."""


@dataclass(frozen=True)
class Verification:
    """How closely a backend's embeddings followed PyTorch fp32 on the probe images."""

    images: int
    min_cosine: float
    mean_cosine: float
    tolerance: float
    top1_agreement: float | None  # share of images with the same top label; None without labels

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.tolerance

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def check(self, subject: str, fix: str) -> Verification:
        """Itself when it passed; else a :class:`BackendMismatchError` naming ``fix``."""
        if not self.passed:
            raise BackendMismatchError(
                f"{subject} differs from PyTorch fp32: min cosine {self.min_cosine:.5f} over "
                f"{self.images} probe images, below the required {self.tolerance}; {fix}"
            )
        return self


def export_onnx(embedder: Embedder, out: Path, *, quantize: str | None = None) -> ExportManifest:
    """Export an fp32 CPU embedder to ``out`` as ONNX, verified against it.

    Args:
        embedder: the PyTorch model, loaded with device cpu and precision fp32.
        out: the export directory: new, empty, or an earlier export (replaced).
        quantize: ``None`` for fp32 weights, or ``"int8"`` for ONNX Runtime dynamic
            quantization of the matrix multiplications.

    Returns:
        The manifest written beside ``model.onnx``, with its verification.

    Raises:
        ConfigError: a bad ``out`` or ``quantize``, a non-fp32 embedder, or missing packages.
        BackendMismatchError: the export disagreed with PyTorch; nothing was written.
    """
    _check_exportable(embedder, quantize)
    out = Path(out).expanduser()
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fix = f"nothing was written to {out}; " + (
        "export without --quantize, or use --precision fp32 or bf16 with this model"
        if quantize
        else "report it with the torch and onnxruntime versions"
    )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-export-") as temp:
        staging = Path(temp)
        manifest = _write_export(embedder, staging, quantize)
        verification = verify_export(
            staging, embedder, subject=f"the ONNX export to {out}", fix=fix
        )
        manifest = dataclasses.replace(manifest, verification=verification.as_dict())
        (staging / MANIFEST_FILE).write_text(manifest.to_json())
        _publish(staging, out)
    return manifest


def verify_export(
    directory: Path,
    reference: Embedder,
    *,
    subject: str | None = None,
    fix: str = "export again from the checkpoint you compare it with",
) -> Verification:
    """Check an export directory against a PyTorch fp32 embedder; raise when it disagrees.

    Raises:
        BackendMismatchError: min cosine below ``TOLERANCES`` for the export's precision.
    """
    candidate = open_export(Path(directory), torch.get_num_threads(), require_verified=False)
    verification = compare_embedders(reference, candidate, TOLERANCES[candidate.precision])
    return verification.check(subject or f"export {directory}", fix)


def compare_embedders(
    reference: Embedder,
    candidate: Embedder | OnnxEmbedder,
    tolerance: float,
    images: Sequence[Image.Image] | None = None,
) -> Verification:
    """Both embedders on the same images (each with its own preprocessing), compared."""
    images = list(images) if images is not None else probe_images()
    expected = reference.embed_images(images)
    got = candidate.embed_images(images)
    cosines = np.sum(expected.vectors * got.vectors, axis=1)
    agreement = None
    if reference.has_labels and candidate.has_labels:
        same = [a[0].label == b[0].label for a, b in zip(expected.labels, got.labels, strict=True)]
        agreement = float(np.mean(same))
    return Verification(
        images=len(images),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        tolerance=tolerance,
        top1_agreement=agreement,
    )


def probe_images(count: int = PROBE_IMAGES, seed: int = PROBE_SEED) -> list[Image.Image]:
    """Seeded colour fields from coarse to fine detail: the same images on every machine."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        cells = 2 + (i * 5) % 30  # spread the detail so the check is not one kind of picture
        grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        images.append(Image.fromarray(grid).resize((256, 256), Image.Resampling.BICUBIC))
    return images


def _check_exportable(embedder: Embedder, quantize: str | None) -> None:
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, not {quantize!r}")
    if embedder.device != "cpu" or embedder.precision != "fp32":
        raise ConfigError(
            f"export needs the model in fp32 on the cpu, not {embedder.precision} on "
            f"{embedder.device}; load it with --device cpu --precision fp32"
        )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ConfigError(
            f"--out {out} is not empty and holds no vitsearch export; give a new or empty directory"
        )


def _write_export(embedder: Embedder, staging: Path, quantize: str | None) -> ExportManifest:
    """model.onnx, the processor config and an unverified manifest, in ``staging``."""
    onnx = _require_onnx()
    exported = staging / "fp32.onnx"
    _export_graph(embedder, exported)
    model = staging / MODEL_FILE
    quantization = _quantize_int8(exported, model) if quantize == "int8" else None
    if quantization is None:
        exported.rename(model)
    embedder._processor.save_pretrained(staging)  # the very config the checkpoint preprocesses with
    manifest = ExportManifest(
        source_name=embedder.info.name,
        source_fingerprint=embedder.info.fingerprint,
        dim=embedder.info.dim,
        precision=quantize or "fp32",
        opset=_opset(onnx.load(str(model), load_external_data=False)),
        preprocessing=embedder.info.preprocessing,
        features=dataclasses.asdict(embedder.features),
        id2label=dict(embedder._id2label),
        quantization=quantization,
        versions=_versions(),
    )
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


class _ExportGraph(torch.nn.Module):
    """Exactly what :meth:`Embedder.embed` computes, as one traceable forward."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        # The Embedder's own modules and pooling, so the graph cannot drift from the PyTorch path.
        self.backbone = embedder._backbone
        self.head = embedder._head
        self.features = embedder.features

    def forward(self, pixel_values: torch.Tensor):
        final = self.features.layer == FINAL_LAYER
        out = self.backbone(pixel_values=pixel_values, output_hidden_states=not final)
        tokens = out.last_hidden_state if final else out.hidden_states[self.features.layer]
        embedding = torch.nn.functional.normalize(_pool(tokens, self.features.pool), dim=-1)
        if self.head is None:
            return embedding
        return embedding, self.head(out.last_hidden_state[:, 0])


def _export_graph(embedder: Embedder, path: Path) -> None:
    channels, height, width = embedder.preprocess(probe_images(1)[0]).shape
    example = torch.zeros(EXAMPLE_BATCH, channels, height, width)
    outputs = [EMBEDDING_OUTPUT, LOGITS_OUTPUT] if embedder.has_labels else [EMBEDDING_OUTPUT]
    with _quiet_exporter(), torch.inference_mode(False):
        torch.onnx.export(
            _ExportGraph(embedder).eval(),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file: a ViT-B is far below protobuf's 2 GB
            verbose=False,
        )


def _quantize_int8(source: Path, target: Path) -> dict:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized per batch."""
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_name("prepared.onnx")
    # ORT's recommended pre-processing (shape inference, basic fusions); without it
    # quantize_dynamic warns on the root logger. On ViT-B/16 here it changed neither speed nor
    # cosine. Symbolic shape inference is skipped: it fails on the exporter's Expand (CLS token).
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    source.unlink()
    quantize_dynamic(prepared, target, weight_type=QuantType.QInt8)
    prepared.unlink()
    return {
        "dtype": "int8",
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weights": "int8, per tensor",
        "activations": "uint8, scale computed per batch at run time",
        "onnxruntime": onnxruntime.__version__,
    }


def _publish(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and comes back last: a half-replaced export never looks complete.
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for name in (MODEL_FILE, PROCESSOR_FILE, MANIFEST_FILE):
        os.replace(staging / name, out / name)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions() -> dict:
    import onnx
    import onnxruntime
    import transformers

    from vitsearch import __version__

    return {
        "vitsearch": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _require_onnx() -> ModuleType:
    """The onnx module, or a clear error when the optional extra is missing."""
    try:
        import onnx
        import onnxruntime  # noqa: F401 (the export is verified with it)
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the {exc.name} package; {INSTALL_HINT}") from exc
    return onnx


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about internals (torchvision ops, deprecations) a user cannot act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
