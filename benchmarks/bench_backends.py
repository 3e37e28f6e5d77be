"""Every backend candidate on this CPU: agreement with torch fp32 on a trained model, speed on
a full-size ViT-B/16, and what ``auto`` picks here.

Run: ``python benchmarks/bench_backends.py PATH --model DIR [--photos N] [--rounds R]
[--batch-size B] [--threads T]``, or ``--teach-only`` to time ``teach`` alone. PATH is a folder
of real photos (e.g. an ImageNet sample, read in place), DIR a trained checkpoint (e.g. a
ViT-Ti/16); everything else lives in a temporary directory.

Candidates: torch fp32 (the reference), torch bf16 (CPUs with bf16 instructions only), torch
dynamic int8 (``--precision int8``), ONNX Runtime fp32 and block int8 (which ``auto`` times),
ONNX Runtime per-tensor dynamic int8 (the scheme vitsearch shipped before, quantized here only,
as the reference it replaced), and OpenVINO fp32 and NNCF int8 (``auto`` times the int8) when
``openvino`` (and ``nncf``) are installed. The shipped variants are made by vitsearch's own
code (``load_embedder``, ``quantize_int8``, ``export_model``); one the shipped check refuses is
rebuilt unverified by the same code, so it is still measured, and marked FAIL.

1. Agreement, on DIR's trained weights over N real photos: top-10 neighbour overlap among the
   photos, min and mean cosine and top-1 label agreement with torch fp32, and whether the
   shipped check (probe images: min cosine and neighbour overlap, ``compare_embedders``) passes.
   Random weights lack a trained network's outlier activations, so int8 error is judged here.
2. Speed, on a seeded random ViT-B/16 (``ViTConfig()``: the real FLOPs): images/s of one batch,
   the candidates taking turns over rounds (a passing load then slows all of them alike), best
   and median, each as a ratio to torch fp32 in the same rounds.
3. ``auto``: ``vitsearch.model.choice.runtime.measure`` on that ViT-B in a fresh home, as the
   first run of ``load_model`` makes it (exports included): its recorded rates and choice, and
   its time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _agreement import Agreement, agreement, embed_batches, load_pixels
from _models import add_model_options, checkpoint_settings, save_vit_b16
from _photos import pick_photos
from _synthetic import flat_rows, synthesize, write_library
from _timing import CpuMeter, alternate, summarise, timed

from vitsearch import app
from vitsearch.config import Settings
from vitsearch.labels.teach import apply_classifier, train
from vitsearch.machine.hardware import cpu_flags, cpu_name, has_bf16_hardware
from vitsearch.model import Embedder
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.choice.runtime import EXPORTS_FOLDER, choose_runtime
from vitsearch.model.exported.loader import open_export
from vitsearch.model.exported.manifest import BackendMismatchError, read_manifest
from vitsearch.model.exported.onnx_backend import MODEL_FILE
from vitsearch.model.pytorch.exporter import (
    NEIGHBOURS,
    TOLERANCES,
    Verification,
    compare_embedders,
    export_model,
)
from vitsearch.model.pytorch.quantize import quantize_int8
from vitsearch.store import open_library

DEFAULT_PHOTOS = 300
DEFAULT_ROUNDS = 6
FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")
LOAD_WARNING = 1.5  # 1-minute load average above which the machine is too busy to time
BUSY_WARNING_CORES = 0.1
REFERENCE = "torch-fp32"
TEACH_EMBEDDINGS = 10_000
TEACH_CLASSES = 10
TEACH_EXAMPLES_PER_CLASS = 200  # "a few to a few hundred" example photos per label


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    how: str  # how a vitsearch user gets it
    tolerance: str  # the TOLERANCES entry its check uses


VARIANTS = (
    Variant(
        REFERENCE, "torch fp32", "`--backend torch --precision fp32`; `auto` candidate", "fp32"
    ),
    Variant("torch-bf16", "torch bf16", "`--precision bf16`; `auto` candidate, unchecked", "fp32"),
    Variant("torch-int8", "torch dynamic int8", "`--precision int8`", "int8"),
    Variant(
        "onnx-fp32",
        "ONNX Runtime fp32",
        "`--backend onnx --precision fp32`; `auto` candidate",
        "fp32",
    ),
    Variant(
        "onnx-int8",
        "ONNX Runtime int8, block (shipped)",
        "`--backend onnx`; `auto` candidate",
        "int8",
    ),
    Variant(
        "onnx-int8-dynamic", "ONNX Runtime int8, per-tensor dynamic (old)", "benchmark only", "int8"
    ),
    Variant("openvino-fp32", "OpenVINO fp32", "`--backend openvino --precision fp32`", "fp32"),
    Variant(
        "openvino-int8",
        "OpenVINO NNCF int8 weights",
        "`--backend openvino`; `auto` candidate (openvino extra)",
        "int8",
    ),
)


@dataclass(frozen=True)
class Source:
    """The fp32 torch model every variant is made from, and where their files go."""

    fp32: Embedder
    settings: Settings
    work: Path
    check: bool = True  # run the check on variants vitsearch does not check itself

    def checked(self, embedder, tolerance: float) -> Verification | None:
        return compare_embedders(self.fp32, embedder, tolerance) if self.check else None


@dataclass(frozen=True)
class Built:
    embedder: object  # Embedder or ExportedEmbedder
    check: Verification | None  # the shipped check on probe images; None for the reference
    refused: str = ""  # the shipped check's message when it refused to write the export


@dataclass(frozen=True)
class Quality:
    agreement: Agreement
    check: Verification | None
    refused: str


@dataclass(frozen=True)
class AutoChoice:
    chosen: str
    seconds: float  # the whole first-run measurement, exports included
    results: list[dict]
    busy: float  # cores other processes used meanwhile


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Every backend candidate (torch fp32/bf16/int8, ONNX Runtime fp32/block int8/old "
            "dynamic int8, OpenVINO when installed): agreement with torch fp32 on a trained "
            "checkpoint over real photos, images/s on a random full-size ViT-B/16, and what "
            "`auto` picks. About 10 minutes on an idle 2-core CPU; close other programs first."
        )
    )
    parser.add_argument("path", type=Path, nargs="?", help="folder of photos (sorted by name)")
    parser.add_argument("--model", type=Path, help="trained checkpoint to judge agreement on")
    parser.add_argument(
        "--photos",
        type=int,
        default=DEFAULT_PHOTOS,
        help=f"photos compared with torch fp32 (default {DEFAULT_PHOTOS})",
    )
    add_model_options(parser, threads_help="intra-op threads of every backend")
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"timed rounds, one batch per candidate each (default {DEFAULT_ROUNDS})",
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


def available_variants() -> list[Variant]:
    """Those this machine can run: bf16 needs bf16 hardware, OpenVINO its packages."""
    skip = set()
    if not has_bf16_hardware(cpu_flags()):
        skip.add("torch-bf16")
    if importlib.util.find_spec("openvino") is None:
        skip |= {"openvino-fp32", "openvino-int8"}
    elif importlib.util.find_spec("nncf") is None:
        skip.add("openvino-int8")
    return [v for v in VARIANTS if v.key not in skip]


def build(variant: Variant, src: Source) -> Built:
    if variant.key == REFERENCE:
        return Built(src.fp32, None)
    tolerance = TOLERANCES[variant.tolerance]
    if variant.key == "torch-bf16":  # auto runs it unchecked; judged here as fp32 exports are
        bf16 = app.load_model(src.settings.replace(precision="bf16"))
        return Built(bf16, src.checked(bf16, tolerance))
    if variant.key == "torch-int8":
        int8 = quantize_int8(src.fp32, check=False)  # checked here, so a miss is still measured
        return Built(int8, src.checked(int8, tolerance))
    if variant.key == "onnx-int8-dynamic":
        return dynamic_int8(src, tolerance)
    fmt, _, precision = variant.key.partition("-")
    return shipped_export(src, fmt, None if precision == "fp32" else precision)


def build_all(src: Source) -> Iterator[tuple[Variant, Built]]:
    """Each available variant, made in order (the ONNX fp32 graph before what starts from it)."""
    for variant in available_variants():
        started = time.perf_counter()
        built = build(variant, src)
        seconds = time.perf_counter() - started
        refused = "; REFUSED by the shipped check, built unverified" if built.refused else ""
        print(f"  made {variant.name} in {seconds:.1f}s{refused}")
        yield variant, built


def fp32_graph(src: Source) -> Path:
    return src.work / "onnx-fp32" / MODEL_FILE


def shipped_export(src: Source, fmt: str, quantize: str | None) -> Built:
    """vitsearch's own export (verified as shipped), opened with the benchmark's threads."""
    out = src.work / f"{fmt}-{quantize or 'fp32'}"
    graph = None if (fmt, quantize) == ("onnx", None) else fp32_graph(src)
    try:
        manifest = export_model(src.fp32, out, fmt=fmt, quantize=quantize, graph=graph)
    except BackendMismatchError as exc:
        return refused_export(src, out, fmt, quantize, graph, str(exc))
    fields = {k: v for k, v in manifest.verification.items() if k != "passed"}
    return Built(open_export(out, src.settings.threads), Verification(**fields))


def refused_export(
    src: Source, out: Path, fmt: str, quantize: str | None, graph: Path | None, why: str
) -> Built:
    """The same files the export would have written, without its check, to measure them."""
    # private on purpose: the benchmark reports what the check refused; vitsearch never opens it
    from vitsearch.model.pytorch.exporter import _write_export

    out.mkdir(parents=True, exist_ok=True)
    _write_export(src.fp32, out, fmt, quantize, graph)
    embedder = open_export(out, src.settings.threads, require_verified=False)
    check = compare_embedders(src.fp32, embedder, TOLERANCES[quantize or "fp32"])
    return Built(embedder, check, refused=why)


def dynamic_int8(src: Source, tolerance: float) -> Built:
    """The scheme vitsearch shipped before block int8: ORT's pre-processing, then
    ``quantize_dynamic`` (int8 weights per tensor, activations per batch) of the fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = src.work / "onnx-int8-dynamic"
    shutil.copytree(fp32_graph(src).parent, out)
    prepared = out / "prepared.onnx"
    # symbolic shape inference fails on the exporter's Expand (CLS token), as in the old export
    quant_pre_process(str(fp32_graph(src)), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(out / MODEL_FILE), weight_type=QuantType.QInt8)
    prepared.unlink()
    manifest = dataclasses.replace(
        read_manifest(out),
        precision="int8",
        quantization={"method": "onnxruntime.quantization.quantize_dynamic (QInt8)"},
        verification=None,
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    embedder = open_export(out, src.settings.threads, require_verified=False)
    return Built(embedder, src.checked(embedder, tolerance))


def agreement_phase(args: argparse.Namespace, photos: list[Path], work: Path) -> dict:
    """Variant key -> Quality, on the trained checkpoint over the photos."""
    settings = checkpoint_settings(args.model, args)
    fp32 = app.load_model(settings.replace(precision="fp32"))
    print(f"\n1. agreement on {args.model} ({fp32.info.dim}-d) over {len(photos)} photos")
    pixels = load_pixels(fp32, photos)
    expected = embed_batches(fp32, pixels, args.batch_size)
    results = {}
    for variant, built in build_all(Source(fp32, settings, work / "trained")):
        got = embed_batches(built.embedder, pixels, args.batch_size)
        results[variant.key] = Quality(agreement(expected, got), built.check, built.refused)
        a = results[variant.key].agreement
        print(f"    top-{NEIGHBOURS} overlap {a.overlap:.3f}, min cosine {a.min_cosine:.4f}")
        del built, got
        gc.collect()
    return results


def speed_phase(
    args: argparse.Namespace, checkpoint: Path, photos: list[Path], work: Path
) -> tuple[dict, float]:
    """Variant key -> Speed on the random ViT-B/16, and the cores others used while timing."""
    print(f"\n2. speed on a seeded random ViT-B/16 ({checkpoint})")
    settings = checkpoint_settings(checkpoint, args)
    fp32 = app.load_model(settings.replace(precision="fp32"))
    batch = load_pixels(fp32, (photos * args.batch_size)[: args.batch_size])
    # random weights: only the checks vitsearch's exports make anyway (they cost minutes)
    made = dict(build_all(Source(fp32, settings, work / "vit-b16-variants", check=False)))
    embeds = {v.key: built.embedder.embed for v, built in made.items()}
    print(f"  before timing (this benchmark's exports count in it): {load_text(os.getloadavg())}")
    busy: dict[str, float] = {}
    with CpuMeter(busy, "speed"):
        rates = alternate(embeds, batch, args.rounds)
    for name, values in rates.items():
        print(f"  {name}: images/s per round {' '.join(f'{v:.2f}' for v in values)}")
    return summarise(rates), busy["speed"]


def auto_phase(args: argparse.Namespace, checkpoint: Path, home: Path) -> AutoChoice:
    """``load_model`` on the ViT-B in a fresh home: on a CPU with a choice that is the first
    run's ``measure`` (exports included), and what it recorded."""
    settings = checkpoint_settings(checkpoint, args, home=home)
    runtime = choose_runtime(settings.backend, settings.precision, settings.device)
    names = ", ".join(c.name for c in runtime.candidates) or "-"
    print(f"\n3. auto on the ViT-B/16 in a fresh home: {runtime.reason} (candidates {names})")
    busy: dict[str, float] = {}
    with CpuMeter(busy, "auto"):
        embedder, seconds = timed(lambda: app.load_model(settings))
    return AutoChoice(candidate_name(embedder), seconds, recorded_timings(home), busy["auto"])


def candidate_name(embedder) -> str:
    """``torch-bf16``, ``onnx-int8``...: what runs the embedder."""
    backend = embedder.manifest.backend if hasattr(embedder, "manifest") else "torch"
    return f"{backend}-{embedder.precision}"


def recorded_timings(home: Path) -> list[dict]:
    """The timings ``measure`` kept in the home (read as JSON: only printed)."""
    results = []
    for path in sorted((home / EXPORTS_FOLDER).glob("measured-*.json")):
        results += json.loads(path.read_text()).get("results", [])
    return results


def load_text(load: tuple[float, float, float], limit: float = LOAD_WARNING) -> str:
    """The load averages as ``uptime`` prints them, flagged when the last minute's is high."""
    text = f"load average {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"
    if load[0] > limit:
        text += f" - ABOVE {limit}: other work shares the CPU, rates are unreliable"
    return text


def print_machine(args: argparse.Namespace) -> None:
    import onnxruntime
    import torch

    flags = cpu_flags()
    marks = [f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS_OF_INTEREST]
    print(f"CPU:      {cpu_name()} ({os.cpu_count()} logical cores)")
    print(f"flags:    {', '.join(marks)}")
    print(
        f"versions: torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"openvino {_version('openvino')}, nncf {_version('nncf')}"
    )
    print(f"threads:  {args.threads} per backend; batch size {args.batch_size}")
    print(f"start:    {load_text(os.getloadavg())}")


def _version(package: str) -> str:
    if importlib.util.find_spec(package) is None:
        return "not installed"
    return importlib.import_module(package).__version__.split("-")[0]


def check_text(quality: Quality | None) -> str:
    """PASS or FAIL with what the shipped check saw on its probe images."""
    if quality is None or quality.check is None:
        return "reference"
    c = quality.check
    verdict = "PASS" if c.passed else "FAIL"
    return (
        f"{verdict} (probes: min cos {c.min_cosine:.4f}/{c.tolerance}, "
        f"overlap {c.neighbour_overlap:.3f}/{c.min_overlap})"
    )


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(quality: dict, speed: dict) -> list[list[str]]:
    """One row of cells per variant measured in either phase."""
    rows = []
    for v in VARIANTS:
        q, s = quality.get(v.key), speed.get(v.key)
        if q is None and s is None:
            continue
        a = q.agreement if q else None
        rows.append(
            [
                v.name,
                v.how,
                f"{s.best:.2f} / {s.median:.2f}" if s else "-",
                f"{s.ratio_best:.2f}x / {s.ratio_median:.2f}x" if s else "-",
                _number(a and a.overlap, 3),
                _number(a and a.min_cosine, 4),
                _number(a and a.mean_cosine, 4),
                _number(a and a.top1, 3),
                check_text(q),
            ]
        )
    return rows


HEADER = [
    "candidate",
    "how to run it",
    "ViT-B/16 images/s best / median",
    "vs torch fp32 best / median",
    f"top-{NEIGHBOURS} overlap",
    "min cos",
    "mean cos",
    "top-1 same",
    "shipped check",
]


def markdown_table(rows: list[list[str]], header: Sequence[str] = HEADER) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def report(
    args: argparse.Namespace,
    quality: dict,
    speed: dict,
    busy: float,
    photos: int,
) -> None:
    print(
        f"\nCPU {cpu_name()}, {args.threads} threads; agreement with torch fp32 on "
        f"{args.model.name} over {photos} photos; ViT-B/16 speed at batch {args.batch_size}, "
        f"{args.rounds} alternating rounds (ratios: best to best, median of same-round ratios)"
    )
    print(markdown_table(table_rows(quality, speed)))
    for key, q in quality.items():
        if q.refused:
            print(f"  {key}: {q.refused}")
    print(f"other processes used up to {busy:.2f} cores while timing")
    if busy > BUSY_WARNING_CORES:
        print("WARNING: the machine was not idle while timing; ratios are more robust than rates")


def print_auto(auto: AutoChoice) -> None:
    results = ", ".join(
        f"{r.get('candidate')} {'rejected' if r.get('rejected') else r.get('images_per_second')}"
        for r in auto.results
    )
    print(
        f"auto picks {auto.chosen} here: its first-run measurement took {auto.seconds:.0f}s "
        f"with exports (recorded images/s at its probe batch: {results}; other processes "
        f"used up to {auto.busy:.2f} cores meanwhile)"
    )


def run(args: argparse.Namespace, photos: list[Path], work: Path) -> None:
    print_machine(args)
    quality = agreement_phase(args, photos, work)
    gc.collect()
    checkpoint = save_vit_b16(work / "vit-b16")
    speed, busy = speed_phase(args, checkpoint, photos, work)
    report(args, quality, speed, busy, len(photos))
    gc.collect()
    try:
        print_auto(auto_phase(args, checkpoint, work / "home"))
    except Exception as exc:  # the table above stands; say why auto could not be shown
        print(f"auto's measurement failed: {type(exc).__name__}: {exc}")
    print(f"at the end (this benchmark's work counts in it): {load_text(os.getloadavg())}")


def teach_timing(n: int, temp: Path) -> None:
    """`teach` without its photo decoding: fit on labelled examples taken from an n-photo
    library of clustered 768-d embeddings, then label all n from SQLite (no model)."""
    data = synthesize(n, 768)
    roots = ["/photos"]
    _ids, write_s, _build_s = write_library(
        temp / "teach-home", 768, n, roots, flat_rows(data, roots)
    )
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
            cid = library.save_classifier(
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
    # before ORT's block quantizer is imported: it calls basicConfig(level=INFO) on import
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.teach_only:
        with tempfile.TemporaryDirectory(prefix="vitsearch-bench-teach-") as temp:
            teach_timing(args.teach_embeddings, Path(temp))
        return
    if args.path is None or args.model is None:
        raise SystemExit(
            "PATH (a folder of photos) and --model DIR are needed, unless --teach-only"
        )
    photos = pick_photos(args.path, args.photos)
    if len(photos) <= NEIGHBOURS:
        raise SystemExit(f"{args.path} has {len(photos)} photos; neighbour overlap needs more")
    if args.rounds < 1 or args.batch_size < 1:
        raise SystemExit("--rounds and --batch-size must be at least 1")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitsearch-bench-backends-") as temp:
        run(args, photos, Path(temp))
        if args.teach_embeddings:
            teach_timing(args.teach_embeddings, Path(temp))
    print(f"total time: {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
