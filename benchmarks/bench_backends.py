"""Model backends side by side on a full-size ViT-B/16: images/s and cosine to torch fp32.

Run: ``python benchmarks/bench_backends.py PATH [--images N] [--cosine-images M]
[--batch-size B] [--threads T] [--repeat R]``. PATH is a folder of photos (e.g. an ImageNet
sample); they are read in place, and everything else lives in a temporary directory.

Backends, measured in one run on the same pre-processed pixels: torch fp32, torch bf16,
torch int8 (dynamic quantization of the linear layers), ONNX Runtime fp32 and int8 (dynamic
quantization), and OpenVINO on the fp32 ONNX graph when ``openvino`` is installed (and on
it with NNCF int8 weights, as ``export --format openvino --quantize int8`` makes it, with
``nncf``).

The checkpoint is a *randomly initialised* ViT-B/16 (seeded), like bench_index.py's: speed
is that of the real architecture, but a trained model's activations (and so its int8
rounding error) differ, so the int8 cosines here are indicative only.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_explore import synthesize, write_library
from bench_index import CpuMeter, add_model_options, pick_photos, save_vit_b16, timed
from PIL import Image

from vitsearch.config import Settings, load_settings
from vitsearch.model import Embedder, load_embedder
from vitsearch.model.export import TOLERANCES, export_onnx
from vitsearch.model.hardware import cpu_flags, cpu_name, has_bf16_hardware
from vitsearch.model.onnx_backend import MODEL_FILE, OnnxEmbedder, load_onnx_embedder
from vitsearch.model.quantize import quantize_int8
from vitsearch.store import open_library
from vitsearch.teach import apply_classifier, train

DEFAULT_IMAGES = 64
DEFAULT_COSINE_IMAGES = 32
DEFAULT_REPEAT = 2
FLAGS_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)
BUSY_WARNING_CORES = 0.1
TEACH_EMBEDDINGS = 10_000
TEACH_CLASSES = 10
TEACH_EXAMPLES_PER_CLASS = 200  # "a few to a few hundred" example photos per label

Embed = Callable[[np.ndarray], np.ndarray]  # (n, 3, H, W) pixels -> (n, dim) unit vectors
Args = argparse.Namespace


@dataclass
class Row:
    backend: str
    precision: str
    rate: float  # images/s, best of the repeats
    min_cosine: float
    mean_cosine: float
    busy: float  # cores other processes used meanwhile
    note: str = ""

    @property
    def target(self) -> float:
        return TOLERANCES["int8" if self.precision == "int8" else "fp32"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Compare model backends (torch fp32/bf16/int8, ONNX Runtime fp32/int8, OpenVINO "
            "when installed) on a randomly initialised ViT-B/16: images/s at one batch size "
            "and cosine to torch fp32 on real photos. About 2-3 minutes on an idle 2-core "
            "CPU with the defaults; close other programs first."
        )
    )
    parser.add_argument(
        "path", type=Path, nargs="?", help="folder of photos (files sorted by name)"
    )
    parser.add_argument(
        "--images",
        type=int,
        default=DEFAULT_IMAGES,
        help=f"photos timed per backend (default {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--cosine-images",
        type=int,
        default=DEFAULT_COSINE_IMAGES,
        help=f"photos compared with fp32 (default {DEFAULT_COSINE_IMAGES})",
    )
    add_model_options(parser, threads_help="intra-op threads of every backend")
    parser.add_argument(
        "--repeat",
        type=int,
        default=DEFAULT_REPEAT,
        help=f"timed passes per backend, fastest kept (default {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--teach-embeddings",
        type=int,
        default=TEACH_EMBEDDINGS,
        help=f"library size for the `teach` timing, 0 to skip it (default {TEACH_EMBEDDINGS})",
    )
    parser.add_argument(
        "--teach-only", action="store_true", help="time `teach` only (no model, no PATH photos)"
    )
    return parser.parse_args(argv)


def load_pixels(embedder: Embedder, photos: Sequence[Path]) -> np.ndarray:
    """The photos through the checkpoint's own processor, as every backend will see them."""
    return np.stack([embedder.preprocess(Image.open(p).convert("RGB")) for p in photos])


def embed_all(embed: Embed, pixels: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate(
        [embed(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
    )


def time_backend(embed: Embed, pixels: np.ndarray, batch_size: int, repeat: int) -> float:
    """images/s: one untimed warm-up batch, then the fastest of ``repeat`` passes."""
    embed(pixels[:batch_size])
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        embed_all(embed, pixels, batch_size)
        runs.append(time.perf_counter() - started)
    return len(pixels) / min(runs)


def measure(
    name: str,
    precision: str,
    embed: Embed,
    pixels: np.ndarray,
    reference: np.ndarray,
    args: argparse.Namespace,
    note: str = "",
) -> Row:
    """Speed on all pixels, then cosine to ``reference`` on the first photos, same batches."""
    busy = {}
    with CpuMeter(busy, name):
        rate = time_backend(embed, pixels, args.batch_size, args.repeat)
    vectors = embed_all(embed, pixels[: len(reference)], args.batch_size)
    cosines = np.sum(vectors * reference, axis=1)
    print(f"  measured {name} {precision}: {rate:.2f} images/s")
    return Row(name, precision, rate, float(cosines.min()), float(cosines.mean()), busy[name], note)


def vectors_of(embedder: Embedder | OnnxEmbedder) -> Embed:
    return lambda pixels: embedder.embed(pixels).vectors


def torch_rows(
    fp32: Embedder, settings: Settings, pixels: np.ndarray, reference: np.ndarray, args: Args
) -> list[Row]:
    """torch fp32 (the reference), bf16 and int8."""
    rows = [measure("torch", "fp32", vectors_of(fp32), pixels, reference, args, "reference")]
    bf16_note = (
        "CPU has bf16 hardware"
        if has_bf16_hardware(cpu_flags())
        else "NO bf16 hardware: emulated, expect it slower than fp32"
    )
    bf16 = load_embedder(settings.replace(precision="bf16"))
    rows.append(measure("torch", "bf16", vectors_of(bf16), pixels, reference, args, bf16_note))
    del bf16
    int8 = quantize_int8(fp32)
    note = "quantize_dynamic of nn.Linear"
    rows.append(measure("torch", "int8", vectors_of(int8), pixels, reference, args, note))
    return rows


def export(fp32: Embedder, out: Path, quantize: str | None) -> Path:
    started = time.perf_counter()
    manifest = export_onnx(fp32, out, quantize=quantize)
    size = (out / MODEL_FILE).stat().st_size / 1e6
    print(
        f"  exported {manifest.precision} ONNX in {time.perf_counter() - started:.1f}s "
        f"({size:.0f} MB; probe min cosine {manifest.verification['min_cosine']:.5f})"
    )
    return out


def onnx_rows(
    settings: Settings,
    exports: dict[str, Path],
    pixels: np.ndarray,
    reference: np.ndarray,
    args: Args,
) -> list[Row]:
    """ONNX Runtime on each export (precision -> directory)."""
    rows = []
    for precision, directory in exports.items():
        session = load_onnx_embedder(settings.replace(model=str(directory), precision="auto"))
        note = "quantize_dynamic, int8 weights" if precision == "int8" else "export"
        rows.append(
            measure("onnxruntime", precision, vectors_of(session), pixels, reference, args, note)
        )
    return rows


def openvino_rows(
    exports: dict[str, Path], pixels: np.ndarray, reference: np.ndarray, args: Args
) -> list[Row]:
    """OpenVINO on the exported ONNX graphs: the fp32 one as f32, and as bf16 where the CPU
    has it (its default there); the int8 one (ONNX Runtime's dynamic quantization) as is; and,
    with nncf, the fp32 graph with NNCF int8 weights, as ``vitsearch export --format openvino
    --quantize int8`` makes it (f32 activations, as vitsearch runs it; bf16 too where the CPU
    has it)."""
    import openvino

    core = openvino.Core()
    bf16 = has_bf16_hardware(cpu_flags())
    runs = [("fp32", "f32"), *([("fp32", "bf16")] if bf16 else []), ("int8", None)]
    rows = []
    for graph, hint in runs:
        precision = graph if hint in (None, "f32") else hint
        note = f"INFERENCE_PRECISION_HINT={hint}" if hint else "the ONNX Runtime int8 graph"
        model = str(exports[graph] / MODEL_FILE)
        rows.append(_openvino_row(core, model, hint, precision, note, pixels, reference, args))
    if importlib.util.find_spec("nncf") is None:
        print("  nncf is not installed: no OpenVINO NNCF int8 rows (pip install nncf adds them)")
        return rows
    from vitsearch.model.export import compress_int8_weights

    started = time.perf_counter()
    nncf_int8, _ = compress_int8_weights(openvino.convert_model(str(exports["fp32"] / MODEL_FILE)))
    print(f"  NNCF int8 weight compression took {time.perf_counter() - started:.1f}s")
    for hint in ("f32", "bf16") if bf16 else ("f32",):
        note = f"NNCF int8 weights, INFERENCE_PRECISION_HINT={hint}"
        rows.append(_openvino_row(core, nncf_int8, hint, "int8", note, pixels, reference, args))
    return rows


def _openvino_row(
    core,
    model,
    hint: str | None,
    precision: str,
    note: str,
    pixels: np.ndarray,
    reference: np.ndarray,
    args: Args,
) -> Row:
    config = {"INFERENCE_NUM_THREADS": args.threads}
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    compiled = core.compile_model(model, "CPU", config)
    output = compiled.outputs[0]  # the unit embedding

    def embed(batch: np.ndarray) -> np.ndarray:
        return np.asarray(compiled(batch)[output], dtype=np.float32)

    return measure("openvino", precision, embed, pixels, reference, args, note)


def print_machine(args: argparse.Namespace) -> None:
    import onnxruntime
    import torch

    flags = cpu_flags()
    present = [f for f in FLAGS_OF_INTEREST if f in flags]
    absent = [f for f in FLAGS_OF_INTEREST if f not in flags]
    print(f"CPU:            {cpu_name()} ({os.cpu_count()} logical cores)")
    print(f"flags present:  {' '.join(present) or '-'}")
    print(f"flags absent:   {' '.join(absent) or '-'}")
    print(f"bf16 hardware:  {'yes' if has_bf16_hardware(flags) else 'no'}")
    print(
        f"versions:       torch {torch.__version__} (quantized engine "
        f"{torch.backends.quantized.engine}), onnxruntime {onnxruntime.__version__}, "
        f"openvino {_openvino_version()}"
    )
    print(f"threads:        {args.threads} per backend; batch size {args.batch_size}")


def _openvino_version() -> str:
    if importlib.util.find_spec("openvino") is None:
        return "not installed"
    import openvino

    return openvino.__version__.split("-")[0]


def report(rows: list[Row], args: argparse.Namespace, photos: int, cosine_photos: int) -> None:
    fp32 = rows[0].rate
    print()
    print(
        f"images/s: {photos} photos at batch {args.batch_size}, fastest of {args.repeat} "
        f"passes after 1 warm-up batch; cosine to torch fp32 over the first "
        f"{cosine_photos} photos"
    )
    header = (
        f"{'backend':<12} {'precision':<9} {'images/s':>9} {'vs fp32':>8} "
        f"{'min cos':>9} {'mean cos':>9} {'target':>7}  {'verdict':<7}  note"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "ref" if r is rows[0] else ("PASS" if r.min_cosine >= r.target else "FAIL")
        print(
            f"{r.backend:<12} {r.precision:<9} {r.rate:9.2f} {r.rate / fp32:7.2f}x "
            f"{r.min_cosine:9.5f} {r.mean_cosine:9.5f} {r.target:7.3f}  {verdict:<7}  {r.note}"
        )
    busy = max(r.busy for r in rows)
    print(f"CPU used by other processes: up to {busy:.2f} cores during a timed phase")
    if busy > BUSY_WARNING_CORES:
        print("WARNING: the machine was not idle; the rates above are unreliable.")


def run(args: argparse.Namespace, photos: list[Path], temp: Path) -> list[Row]:
    started = time.perf_counter()
    checkpoint = save_vit_b16(temp / "vit-b16")
    settings = load_settings(
        environ={},
        model=str(checkpoint),
        device="cpu",
        batch_size=args.batch_size,
        threads=args.threads,
    )
    print(
        f"checkpoint saved in {time.perf_counter() - started:.1f}s; {len(photos)} photos "
        f"from {args.path}"
    )
    print_machine(args)
    fp32 = load_embedder(settings.replace(precision="fp32"))
    pixels = load_pixels(fp32, photos)
    count = min(args.cosine_images, len(photos))
    reference = embed_all(vectors_of(fp32), pixels[:count], args.batch_size)
    rows = torch_rows(fp32, settings, pixels, reference, args)
    # Exported and verified from the same fp32 model, then freed before ORT is timed.
    exports = {q or "fp32": export(fp32, temp / f"onnx-{q or 'fp32'}", q) for q in (None, "int8")}
    del fp32
    gc.collect()
    rows += onnx_rows(settings, exports, pixels, reference, args)
    if importlib.util.find_spec("openvino") is not None:
        rows += openvino_rows(exports, pixels, reference, args)
    else:
        print("  OpenVINO is not installed: no OpenVINO rows (pip install openvino adds them)")
    print("  OpenVINO int8 rows: ONNX Runtime's dynamically quantized graph, and NNCF's")
    return rows


def teach_timing(n: int, temp: Path) -> None:
    """`teach` without its photo decoding: fit on labelled examples taken from an n-photo
    library of clustered 768-d embeddings, then label all n from SQLite (no model)."""
    data = synthesize(n, 768)
    _ids, write_s, _build_s = write_library(temp / "teach-home", data, budget=0)
    rng = np.random.default_rng(0)
    # labels = the synthetic themes with the most photos: groups of look-alike scenes, as
    # "receipts" or "my cat" would be
    themes, sizes = np.unique(data.theme, return_counts=True)
    chosen = themes[np.argsort(-sizes)[:TEACH_CLASSES]]
    classes_of = np.full(n, -1)
    for c, theme in enumerate(chosen):
        classes_of[data.theme == theme] = c
    examples = np.concatenate(
        [
            rng.choice(rows, min(len(rows), TEACH_EXAMPLES_PER_CLASS), replace=False)
            for rows in (np.flatnonzero(classes_of == c) for c in range(TEACH_CLASSES))
        ]
    )
    labelled_rows = np.flatnonzero(classes_of >= 0)
    names = tuple(f"label_{c}" for c in range(TEACH_CLASSES))
    print(
        f"\nteach: {n:,} library embeddings written in {write_s:.1f}s "
        f"({n / write_s:,.0f} rows/s through write_batch)"
    )
    busy: dict[str, float] = {}
    with CpuMeter(busy, "teach"):
        (classifier, validation), train_s = timed(
            lambda: train(data.vectors[examples], classes_of[examples], names)
        )
        with open_library(temp / "teach-home", write=True) as library:
            cid = library.db.save_classifier(
                "bench", classifier.to_bytes(), list(names), validation.accuracy, "x"
            )
            (labelled, _), apply_s = timed(
                lambda: apply_classifier(library, cid, "bench", classifier)
            )
        (_, all_validation), train_all_s = timed(
            lambda: train(data.vectors[labelled_rows], classes_of[labelled_rows], names)
        )
    print(
        f"  train on {len(examples):,} examples ({TEACH_CLASSES} labels, up to "
        f"{TEACH_EXAMPLES_PER_CLASS} each): {train_s:.2f}s, "
        f"held-out accuracy {validation.accuracy:.3f}"
    )
    print(f"  label the library ({labelled:,} photos, no model forward): {apply_s:.2f}s")
    print(f"  teach = train + label: {train_s + apply_s:.2f}s")
    print(
        f"  train on all {len(labelled_rows):,} photos of those labels as examples: "
        f"{train_all_s:.2f}s, held-out accuracy {all_validation.accuracy:.3f}"
    )
    if busy["teach"] > BUSY_WARNING_CORES:
        print(f"  (other processes used {busy['teach']:.2f} cores meanwhile)")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.teach_only:
        with tempfile.TemporaryDirectory(prefix="vitsearch-bench-teach-") as temp:
            teach_timing(args.teach_embeddings, Path(temp))
        return
    if args.path is None:
        raise SystemExit("PATH is needed (a folder of photos), unless --teach-only")
    photos = pick_photos(args.path, max(args.images, args.cosine_images))
    if not photos:
        raise SystemExit(f"no photos in {args.path}")
    if args.repeat < 1 or args.batch_size < 1:
        raise SystemExit("--repeat and --batch-size must be at least 1")
    print("NOTE: the model is a randomly initialised ViT-B/16 (torch.manual_seed(0)); real")
    print("      weights are not available here. Speeds are representative; int8 cosines")
    print("      on trained weights may be lower (activation outliers), check them there.")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitsearch-bench-backends-") as temp:
        rows = run(args, photos, Path(temp))
        report(rows, args, len(photos), min(args.cosine_images, len(photos)))
        if args.teach_embeddings:
            teach_timing(args.teach_embeddings, Path(temp))
    print(f"total time: {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
