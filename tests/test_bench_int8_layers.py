"""benchmarks/bench_int8_layers.py tells a ViT's products apart in vitsearch's own ONNX export."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import PINNED_BACKEND, benchmark_module
from vitsearch import app
from vitsearch.config import load_settings

pytestmark = pytest.mark.slow

for extra in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(extra, reason="needs the onnx extra")

import onnx  # noqa: E402

from vitsearch.model.onnx_backend import MODEL_FILE  # noqa: E402


def test_each_layer_has_three_projections_an_output_an_mlp_and_two_products(
    tiny_model: Path, tmp_path: Path
) -> None:
    with benchmark_module("bench_int8_layers") as bench:
        settings = load_settings(environ={}, model=str(tiny_model), threads=1, **PINNED_BACKEND)
        graph = bench.prepare(app.load_model(settings), tmp_path)
        layers = 2  # tests/helpers.py's tiny ViT
        assert Counter(graph.kinds.values()) == {
            "qkv": 3 * layers,
            "attention out": layers,
            "fc1": layers,
            "fc2": layers,
            "attention products": 2 * layers,
        }
        d, m = 32, 64  # hidden and intermediate sizes
        assert graph.macs == {
            "qkv": 3 * layers * d * d,
            "attention out": layers * d * d,
            "fc1": layers * d * m,
            "fc2": layers * d * m,
        }
        assert bench.share(graph, "qkv + attention out") == pytest.approx(4 / 8)
        bench.quantized(graph, "qkv", threads=1)  # only the projections became int8
        quantized = onnx.load(str(tmp_path / "qkv" / MODEL_FILE))
        ops = Counter(node.op_type for node in quantized.graph.node)
        head = 1  # a MatMul of its own kind, left out of the embedding's
        assert ops["MatMulInteger"] == 3 * layers and ops["MatMul"] == len(graph.kinds) - 6 + head
