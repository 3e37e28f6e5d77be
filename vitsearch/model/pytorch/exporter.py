"""Exporting a loaded checkpoint to ONNX or OpenVINO, and checking other backends against
PyTorch fp32.

One graph gives what :meth:`Embedder.embed` gives: the unit embedding (of the embedder's
layer and pooling; by default the final CLS token) and, when the checkpoint has a head, the
logits, with a dynamic batch axis. The OpenVINO IR is converted from that same ONNX graph, so
the two formats cannot drift apart. An export is written to a staging directory, checked
against the PyTorch model on seeded probe images, and only then moved into place: a directory
holding a manifest always holds a verified export.

Opening an export by its manifest (``open_export``, ``load_exported``) is
:mod:`vitsearch.model.exported.loader`'s, without torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from vitsearch import __version__
from vitsearch.errors import ConfigError
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.export_request import FORMATS, check_format, check_out
from vitsearch.model.exported.loader import open_export
from vitsearch.model.exported.manifest import (
    EMBEDDING_OUTPUT,
    FORMAT,
    INPUT_NAME,
    LOGITS_OUTPUT,
    OPENVINO_FORMAT,
    BackendMismatchError,
    ExportedEmbedder,
    ExportManifest,
)
from vitsearch.model.exported.onnx_backend import INSTALL_HINT, MODEL_FILE
from vitsearch.model.exported.openvino_backend import OPENVINO_INSTALL_HINT, WEIGHTS_FILE, XML_FILE
from vitsearch.model.features import FINAL_LAYER, EmbeddingBatch
from vitsearch.model.pytorch.embedder import Embedder, _pool

if TYPE_CHECKING:
    import onnx
    import openvino

# Least cosine to PyTorch fp32 each precision must reach: fp32 as bf16 already does, int8
# looser because its weights and activations are rounded to 8 bits.
TOLERANCES = {"fp32": 0.999, "int8": 0.99}
# What a user sees is the neighbours: the least share of each probe image's top-10 neighbours
# (among the probes) that a backend must keep. On the trained ViT-Ti, per-tensor dynamic int8
# kept 0.68 of them over 1000 real photos while its min cosine (0.79) looked merely loose.
NEIGHBOUR_OVERLAP = 0.95
NEIGHBOURS = 10
MODEL_FILES = (MODEL_FILE, XML_FILE, WEIGHTS_FILE)  # every format's model files
OPSET = 18
PROBE_FIELDS = 8  # colour fields, coarse to fine
PROBE_SCENES = 32  # drawn scenes: shapes, lines, blur; what separates int8 schemes (see below)
PROBE_SEED = 0
INT8_BLOCK = 64  # weights and activations share a scale per 64 values of the inner dimension
EXAMPLE_BATCH = 2  # torch.export specialises a batch of 1, so trace with 2 to keep it dynamic


@dataclass(frozen=True)
class Verification:
    """How closely a backend's embeddings followed PyTorch fp32 on the probe images."""

    images: int
    min_cosine: float
    mean_cosine: float
    tolerance: float
    top1_agreement: float | None  # share of images with the same top label; None without labels
    neighbour_overlap: float = 1.0  # mean share of top-10 probe neighbours kept
    min_overlap: float = NEIGHBOUR_OVERLAP

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.tolerance and self.neighbour_overlap >= self.min_overlap

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def check(self, subject: str, fix: str) -> Verification:
        """Itself when it passed; else a :class:`BackendMismatchError` naming ``fix``."""
        if not self.passed:
            raise BackendMismatchError(
                f"{subject} differs from PyTorch fp32 over {self.images} probe images: min "
                f"cosine {self.min_cosine:.5f} (needs {self.tolerance}), top-{NEIGHBOURS} "
                f"neighbours kept {self.neighbour_overlap:.3f} (needs {self.min_overlap}); {fix}"
            )
        return self


def export_onnx(
    embedder: Embedder, out: Path, *, quantize: str | None = None, graph: Path | None = None
) -> ExportManifest:
    """:func:`export_model` to ONNX."""
    return export_model(embedder, out, fmt="onnx", quantize=quantize, graph=graph)


def export_model(
    embedder: Embedder,
    out: Path,
    *,
    fmt: str = "onnx",
    quantize: str | None = None,
    graph: Path | None = None,
) -> ExportManifest:
    """Export an fp32 CPU embedder to ``out`` as ONNX or OpenVINO IR, verified against it.

    Args:
        embedder: the PyTorch model, loaded with device cpu and precision fp32.
        out: the export directory: new, empty, or an earlier export (replaced).
        fmt: ``"onnx"`` (``model.onnx``, run by ONNX Runtime) or ``"openvino"``
            (``model.xml``/``.bin``, run by OpenVINO).
        quantize: ``None`` for fp32 weights, or ``"int8"``: ONNX Runtime block int8 of the
            matrix multiplications, or NNCF int8 weight compression for OpenVINO.
        graph: an fp32 ``model.onnx`` already exported from this very embedder, to start
            from instead of exporting again (the export is still verified).

    Returns:
        The manifest written beside the model, with its verification.

    Raises:
        ConfigError: a bad ``out``, ``fmt`` or ``quantize``, a non-fp32 embedder, or missing
            packages.
        BackendMismatchError: the export disagreed with PyTorch; nothing was written.
    """
    _check_exportable(embedder, fmt, quantize)
    out = Path(out).expanduser()
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runtime = "onnxruntime" if fmt == "onnx" else "openvino"
    fix = f"nothing was written to {out}; " + (
        "export without --quantize, or use --precision fp32 or bf16 with this model"
        if quantize
        else f"report it with the torch and {runtime} versions"
    )
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-export-") as temp:
        staging = Path(temp)
        manifest = _write_export(embedder, staging, fmt, quantize, graph)
        verification = verify_export(
            staging, embedder, subject=f"the {FORMATS[fmt]} export to {out}", fix=fix
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
    candidate: Embedder | ExportedEmbedder,
    tolerance: float,
    images: Sequence[Image.Image] | None = None,
) -> Verification:
    """Both embedders on the same images (each with its own preprocessing), compared."""
    expected = _reference_batch(reference) if images is None else reference.embed_images(images)
    images = list(images) if images is not None else probe_images()
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
        neighbour_overlap=neighbour_overlap(expected.vectors, got.vectors),
    )


def neighbour_overlap(expected: np.ndarray, got: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Mean share of each vector's k nearest others (by ``expected``) that ``got`` keeps."""
    k = min(k, len(expected) - 1)
    if k < 1:
        return 1.0
    near = [_nearest(vectors, k) for vectors in (expected, got)]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(*near, strict=True)]))


def _nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


_REFERENCE_BATCHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reference_batch(reference: Embedder) -> EmbeddingBatch:
    """The reference's output on the probe images, computed once per embedder: every export
    made from it (fp32, then int8) is checked against the same forward."""
    if reference not in _REFERENCE_BATCHES:
        _REFERENCE_BATCHES[reference] = reference.embed_images(probe_images())
    return _REFERENCE_BATCHES[reference]


def probe_images(
    fields: int = PROBE_FIELDS, scenes: int = PROBE_SCENES, seed: int = PROBE_SEED
) -> list[Image.Image]:
    """Seeded pictures, the same on every machine: colour fields from coarse to fine detail,
    then scenes of shapes and lines, some blurred. Measured on the trained ViT-Ti, the scenes'
    neighbour overlap ranks int8 schemes as 1000 real photos do (per-tensor dynamic int8 0.82,
    block int8 0.975), where colour fields alone pass them all (0.97 vs 1.00)."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(fields):
        cells = 2 + (i * 5) % 30  # spread the detail so the check is not one kind of picture
        grid = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
        images.append(Image.fromarray(grid).resize((256, 256), Image.Resampling.BICUBIC))
    return images + [_scene(rng, blur=i % 3 == 0) for i in range(scenes)]


def _scene(rng: np.random.Generator, blur: bool) -> Image.Image:
    def colour() -> tuple[int, ...]:
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    image = Image.new("RGB", (256, 256), colour())
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 12))):
        x0, y0 = (int(v) for v in rng.integers(0, 256, 2))
        box = (x0, y0, x0 + int(rng.integers(8, 200)), y0 + int(rng.integers(8, 200)))
        shape = rng.random()
        if shape < 0.4:
            draw.ellipse(box, fill=colour())
        elif shape < 0.8:
            draw.rectangle(box, fill=colour())
        else:
            draw.line(box, fill=colour(), width=int(rng.integers(1, 9)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3))) if blur else image


def _check_exportable(embedder: Embedder, fmt: str, quantize: str | None) -> None:
    check_format(fmt, quantize)
    if embedder.device != "cpu" or embedder.precision != "fp32":
        raise ConfigError(
            f"export needs the model in fp32 on the cpu, not {embedder.precision} on "
            f"{embedder.device}; load it with --device cpu --precision fp32"
        )


def _write_export(
    embedder: Embedder, staging: Path, fmt: str, quantize: str | None, source: Path | None
) -> ExportManifest:
    """The model, the processor config and an unverified manifest, in ``staging``."""
    openvino = _require_openvino(quantize) if fmt == "openvino" else None
    onnx = _require_onnx(OPENVINO_INSTALL_HINT if openvino else INSTALL_HINT)
    graph = staging / "fp32.onnx"
    if source is not None:  # the exporter takes ~1 min for a ViT; its graph is the same
        shutil.copyfile(source, graph)
    else:
        _export_graph(embedder, graph)
    opset = _opset(onnx.load(str(graph), load_external_data=False))
    if openvino is None:
        quantization = _write_onnx(graph, staging / MODEL_FILE, quantize)
    else:
        quantization = _write_openvino(openvino, graph, staging / XML_FILE, quantize)
    embedder._processor.save_pretrained(staging)  # the very config the checkpoint preprocesses with
    manifest = ExportManifest(
        source_name=embedder.info.name,
        source_fingerprint=embedder.info.fingerprint,
        dim=embedder.info.dim,
        precision=quantize or "fp32",
        opset=opset,
        preprocessing=embedder.info.preprocessing,
        features=dataclasses.asdict(embedder.features),
        id2label=dict(embedder._id2label),
        quantization=quantization,
        versions=_versions(openvino),
        format=OPENVINO_FORMAT if openvino else FORMAT,
    )
    (staging / MANIFEST_FILE).write_text(manifest.to_json())
    return manifest


def _write_onnx(graph: Path, model: Path, quantize: str | None) -> dict | None:
    """``model.onnx`` from the exported graph; the quantization's description, if any."""
    if quantize == "int8":
        return _quantize_int8(graph, model)
    graph.rename(model)
    return None


def _write_openvino(
    openvino: ModuleType, graph: Path, xml: Path, quantize: str | None
) -> dict | None:
    """``model.xml``/``.bin`` converted from the exported graph (names and the dynamic batch
    axis carry over); the quantization's description, if any."""
    model = openvino.convert_model(str(graph))
    graph.unlink()
    quantization = None
    if quantize == "int8":
        model, quantization = compress_int8_weights(model)
    # save_model would halve fp32 weights to fp16 by default: another precision than the
    # manifest names and the verification measured
    openvino.save_model(model, str(xml), compress_to_fp16=False)
    return quantization


def compress_int8_weights(model: openvino.Model) -> tuple[openvino.Model, dict]:
    """NNCF data-free weight compression: int8 weights, float activations. No calibration
    set, so no photos are needed and a batch's embeddings do not depend on its batch-mates."""
    import nncf

    with _quiet_nncf():
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return compressed, {
        "dtype": "int8",
        "method": "nncf.compress_weights (data-free)",
        "weights": "int8 asymmetric (uint8 with a zero point), per output channel",
        "activations": "float32",
        "nncf": nncf.__version__,
    }


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
    channels, height, width = embedder.preprocess(probe_images(1, 0)[0]).shape
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
    """8-bit weights in blocks (ONNX Runtime's MatMulNBits) with int8 arithmetic on activations
    quantized per block too (accuracy level 4).

    Why blocks: trained transformers carry outlier activations in a few channels (after each
    LayerNorm, and above all after GELU); one scale per tensor, as dynamic quantization uses,
    rounds every other channel away. On the trained ViT-Ti over 1000 real photos, dynamic
    per-tensor int8 kept 0.68 of the top-10 neighbours (per-channel weights 0.70; static QDQ
    0.61 over 200); blocks of 64 keep 0.963 with a min cosine of 0.998 (blocks of 128: 0.958,
    256: 0.950). Attention's activation-by-activation products stay fp32.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    MatMulNBitsQuantizer = _nbits_quantizer()

    prepared = source.with_name("prepared.onnx")
    # ORT's recommended pre-processing (shape inference, basic fusions). Symbolic shape
    # inference is skipped: it fails on the exporter's Expand (CLS token).
    with _quiet_quantizer():
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        source.unlink()
        quantizer = MatMulNBitsQuantizer(
            onnx.load(str(prepared)),
            bits=8,
            block_size=INT8_BLOCK,
            is_symmetric=True,
            accuracy_level=4,
        )
        quantizer.process()
        quantizer.model.save_model_to_file(str(target))
    prepared.unlink()
    return {
        "dtype": "int8",
        "method": "onnxruntime.quantization MatMulNBits (bits=8, accuracy_level=4)",
        "weights": f"int8 symmetric, one scale per {INT8_BLOCK} inputs of each output",
        "activations": f"int8, one scale per {INT8_BLOCK} values, computed at run time",
        "onnxruntime": onnxruntime.__version__,
    }


def _nbits_quantizer() -> type:
    """ORT's MatMulNBitsQuantizer; its module calls ``logging.basicConfig(level=INFO)`` on
    import, which would turn on every library's INFO lines in our process: undone here."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    return MatMulNBitsQuantizer


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizer and the ONNX IR passes log every node at INFO: not for a user."""
    loggers = [logging.getLogger(name) for name in ("onnxruntime", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _publish(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes first and comes back last: a half-replaced export never looks complete.
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    names = sorted(path.name for path in staging.iterdir() if path.name != MANIFEST_FILE)
    for stale in set(MODEL_FILES) - set(names):  # an earlier export's in another format
        (out / stale).unlink(missing_ok=True)
    for name in [*names, MANIFEST_FILE]:
        os.replace(staging / name, out / name)


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _versions(openvino: ModuleType | None = None) -> dict:
    import onnx
    import onnxruntime
    import transformers

    versions = {
        "vitsearch": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if openvino is not None:
        versions["openvino"] = openvino.__version__
    return versions


def _require_onnx(hint: str = INSTALL_HINT) -> ModuleType:
    """The onnx module, or a clear error when the optional extra is missing."""
    try:
        import onnx
        import onnxruntime  # noqa: F401 (the export is verified with it)
        import onnxscript  # noqa: F401 (torch.onnx's exporter needs it)
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the {exc.name} package; {hint}") from exc
    return onnx


def _require_openvino(quantize: str | None) -> ModuleType:
    """The openvino module (and nncf for int8), or one line naming the extra to install."""
    try:
        import openvino

        if quantize is not None:
            import nncf  # noqa: F401 (it compresses the weights)
    except ImportError as exc:
        raise ConfigError(
            f"OpenVINO export needs the {exc.name} package; {OPENVINO_INSTALL_HINT}"
        ) from exc
    return openvino


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about internals (torchvision ops, deprecations) a user cannot act on."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), _quiet_quantizer():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF prints a statistics table and a progress bar to stdout, where the CLI's own
    result goes; only its errors are kept."""
    import nncf

    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        nncf.set_log_level(level)
