"""Which layers of a trained ViT can run in int8 and keep the neighbours, and what that buys.

Run: ``python benchmarks/bench_int8_layers.py PATH --model DIR [--photos N] [--rounds R]
[--batch-size B] [--threads T]`` with the onnx extra. PATH is a folder of real photos, DIR a
trained checkpoint (e.g. a ViT-Ti/16).

ONNX Runtime's dynamic int8 (``quantize_dynamic``: int8 weights per tensor, activations per
batch; the per-tensor scheme that bench_backends.py shows losing a third of the neighbours)
applied to one kind of product at a time, then to growing sets of them. The kinds are told
apart by their weights' shapes: the attention's q/k/v projections (d x d, three reading one
input), its output projection (d x d), the MLP's fc1 (d x m) and fc2 (m x d, reading the
GELU's output; each has the other's shape, which the head's d x classes has not), and the two
products of activations inside attention (no weight: ``quantize_dynamic`` leaves them in fp32
even when asked, so no set includes them).

For each set: its share of the weight products' multiply-adds, the top-10 neighbour overlap
with fp32 (and min cosine) on DIR's trained weights over N photos, whether it keeps
``NEIGHBOUR_OVERLAP`` (the shipped check's bar), and on a seeded random ViT-B/16 (the real
FLOPs) the images/s of one batch against the fp32 graph, taking turns over R rounds: the
median of the per-round ratios. A set that keeps the neighbours bounds what int8 can give a
trained ViT on this CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import onnx
from _agreement import agreement, embed_batches, load_pixels
from _models import add_model_options, checkpoint_settings, save_vit_b16
from _photos import pick_photos
from _timing import alternate, summarise
from onnx import numpy_helper

from vitsearch import app
from vitsearch.machine.hardware import cpu_name
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.exported.loader import open_export
from vitsearch.model.exported.manifest import read_manifest
from vitsearch.model.exported.onnx_backend import MODEL_FILE
from vitsearch.model.pytorch.exporter import NEIGHBOUR_OVERLAP, export_model

WEIGHT_KINDS = ("qkv", "attention out", "fc1", "fc2")
SETS = {
    "fp32": (),
    **{kind: (kind,) for kind in WEIGHT_KINDS},
    "qkv + attention out": ("qkv", "attention out"),
    "qkv + attention out + fc1": ("qkv", "attention out", "fc1"),
    "every weight product (quantize_dynamic's default)": WEIGHT_KINDS,
}
REFERENCE = "fp32"


@dataclasses.dataclass
class Graph:
    """An fp32 ONNX export prepared for quantization, and its MatMuls by kind."""

    folder: Path
    prepared: Path
    kinds: dict[str, str]  # MatMul node name -> kind
    macs: Counter  # kind -> multiply-adds per token of its weights


def matmul_kinds(model: onnx.ModelProto) -> tuple[dict[str, str], Counter]:
    """MatMul node name -> kind, and each kind's multiply-adds per token."""
    weights = {w.name: numpy_helper.to_array(w).shape for w in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    readers = Counter(n.input[0] for n in matmuls)
    shapes = {weights[n.input[1]] for n in matmuls if n.input[1] in weights}
    kinds, macs = {}, Counter()
    for node in matmuls:
        shape = weights.get(node.input[1])
        if shape is None:
            kinds[node.name] = "attention products"
            continue
        rows, cols = shape
        if rows == cols:
            kind = "qkv" if readers[node.input[0]] == 3 else "attention out"
        elif (cols, rows) in shapes:
            kind = "fc1" if cols > rows else "fc2"
        else:
            continue  # the classifier head: not part of the embedding
        kinds[node.name] = kind
        macs[kind] += rows * cols
    return kinds, macs


def prepare(embedder, folder: Path) -> Graph:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    export_model(embedder, folder / "fp32")
    prepared = folder / "prepared.onnx"
    # symbolic shape inference fails on the exporter's Expand (CLS token), as in bench_backends
    quant_pre_process(str(folder / "fp32" / MODEL_FILE), str(prepared), skip_symbolic_shape=True)
    return Graph(folder, prepared, *matmul_kinds(onnx.load(str(prepared))))


def quantized(graph: Graph, name: str, threads: int):
    """The fp32 export with the set's MatMuls in dynamic int8, opened unverified."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = graph.folder / "fp32"
    if not SETS[name]:
        return open_export(source, threads)
    out = graph.folder / name.replace(" ", "-")
    shutil.copytree(source, out)
    nodes = [node for node, kind in graph.kinds.items() if kind in SETS[name]]
    quantize_dynamic(
        str(graph.prepared),
        str(out / MODEL_FILE),
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
    )
    manifest = dataclasses.replace(
        read_manifest(out), precision="int8", quantization={"set": name}, verification=None
    )
    (out / MANIFEST_FILE).write_text(manifest.to_json())
    return open_export(out, threads, require_verified=False)


def share(graph: Graph, name: str) -> float:
    return sum(graph.macs[k] for k in SETS[name]) / sum(graph.macs.values())


def agreement_phase(args: argparse.Namespace, photos: list[Path], work: Path) -> dict:
    fp32 = app.load_model(checkpoint_settings(args.model, args, precision="fp32"))
    pixels = load_pixels(fp32, photos)
    expected = embed_batches(fp32, pixels, args.batch_size)
    graph = prepare(fp32, work / "trained")
    print(f"1. agreement on {args.model} over {len(photos)} photos")
    found = {}
    for name in SETS:
        embedder = quantized(graph, name, args.threads)
        found[name] = agreement(expected, embed_batches(embedder, pixels, args.batch_size))
        print(f"  {name:40s} overlap {found[name].overlap:.3f}", flush=True)
    return found


def speed_phase(args: argparse.Namespace, photos: list[Path], work: Path) -> tuple[dict, Graph]:
    checkpoint = save_vit_b16(work / "vit-b16")
    fp32 = app.load_model(checkpoint_settings(checkpoint, args, precision="fp32"))
    batch = load_pixels(fp32, (photos * args.batch_size)[: args.batch_size])
    graph = prepare(fp32, work / "vit-b16-graphs")
    embeds = {name: quantized(graph, name, args.threads).embed for name in SETS}
    print(f"2. speed on a seeded random ViT-B/16, {args.rounds} rounds")
    return summarise(alternate(embeds, batch, args.rounds), REFERENCE), graph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder of real photos")
    parser.add_argument("--model", type=Path, required=True, help="a trained checkpoint")
    parser.add_argument("--photos", type=int, default=1000, help="photos for the agreement")
    parser.add_argument("--rounds", type=int, default=6)
    add_model_options(parser)
    args = parser.parse_args()
    photos = pick_photos(args.folder, args.photos)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; load average {load}")
    with tempfile.TemporaryDirectory(prefix="bench-int8-layers-") as tmp:
        quality = agreement_phase(args, photos, Path(tmp))
        speed, graph = speed_phase(args, photos, Path(tmp))
    header = f"int8 | share of weight MACs | overlap | min cosine | keeps {NEIGHBOUR_OVERLAP}"
    print(f"\n| {header} | ViT-B img/s | vs fp32 |\n" + "| --- " * 7 + "|")
    for name in SETS:
        q, s = quality[name], speed[name]
        keeps = "yes" if q.overlap >= NEIGHBOUR_OVERLAP else "NO"
        print(
            f"| {name} | {share(graph, name):.0%} | {q.overlap:.3f} | {q.min_cosine:.4f} | "
            f"{keeps} | {s.median:.2f} | {s.ratio_median:.2f}x |"
        )
    print(f"(vs fp32: median of the per-round ratios to the fp32 graph; load {load} at the start)")


if __name__ == "__main__":
    main()
