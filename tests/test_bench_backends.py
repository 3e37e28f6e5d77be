"""The pure helpers of benchmarks/bench_backends.py: agreement, round order, summaries, table."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import benchmark_module
from vitsearch.model.features import EmbeddingBatch
from vitsearch.records import Label

# bench_backends imports the exporter, and so torch (seconds)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_backends") as module:
        yield module


def labels(*names: str) -> list[tuple[Label, ...]]:
    return [(Label(name, 0.9), Label("other", 0.1)) for name in names]


def test_top1_agreement_counts_same_top_labels_and_needs_labels(bench) -> None:
    assert bench.top1_agreement(labels("a", "b", "c", "d"), labels("a", "x", "c", "y")) == 0.5
    assert bench.top1_agreement([(), ()], [(), ()]) is None  # a checkpoint without a head


def test_agreement_of_identical_and_of_swapped_vectors(bench) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"c{i}" for i in range(30)]
    same = bench.agreement(
        EmbeddingBatch(vectors, labels(*names)), EmbeddingBatch(vectors.copy(), labels(*names))
    )
    assert same.overlap == 1.0 and same.top1 == 1.0
    assert same.min_cosine == pytest.approx(1.0) and same.mean_cosine == pytest.approx(1.0)
    swapped = vectors.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # two photos trade embeddings: both lose their neighbours
    moved = bench.agreement(EmbeddingBatch(vectors, []), EmbeddingBatch(swapped, []))
    assert moved.overlap < 1.0 and moved.top1 is None
    assert moved.min_cosine == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-6)


def test_rounds_rotate_so_every_candidate_leads_once(bench) -> None:
    names = ["a", "b", "c"]
    orders = [bench.round_order(names, r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_alternate_warms_up_then_runs_each_candidate_once_per_round(bench) -> None:
    calls: list[str] = []
    embeds = {name: (lambda batch, name=name: calls.append(name)) for name in ("a", "b")}
    rates = bench.alternate(embeds, np.zeros((4, 3, 2, 2)), rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {name: len(values) for name, values in rates.items()} == {"a": 3, "b": 3}


def test_summary_ratios_are_best_to_best_and_median_of_same_round_ratios(bench) -> None:
    rates = {"torch-fp32": [10.0, 5.0, 8.0], "fast": [20.0, 15.0, 16.0]}
    speed = bench.summarise(rates)
    fast = speed["fast"]
    assert (fast.best, fast.median) == (20.0, 16.0)
    assert fast.ratio_best == pytest.approx(2.0)
    assert fast.ratio_median == pytest.approx(2.0)  # per round 2.0, 3.0, 2.0: a slow round
    assert speed["torch-fp32"].ratio_best == 1.0 and speed["torch-fp32"].ratio_median == 1.0


def test_load_text_flags_a_busy_machine(bench) -> None:
    assert bench.load_text((0.4, 0.5, 0.6)) == "load average 0.40, 0.50, 0.60"
    assert "ABOVE 1.5" in bench.load_text((2.1, 1.0, 0.5))


def test_markdown_table_has_a_row_per_measured_variant(bench) -> None:
    agreement = bench.Agreement(overlap=0.96, min_cosine=0.998, mean_cosine=0.9995, top1=0.99)
    quality = {"onnx-int8": bench.Quality(agreement, None, "")}
    speed = {"onnx-int8": bench.Speed(40.0, 38.0, 2.5, 2.4)}
    lines = bench.markdown_table(bench.table_rows(quality, speed)).splitlines()
    assert len(lines) == 3 and lines[1].count("---") == len(bench.HEADER)
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[0] == "ONNX Runtime int8, block (shipped)"
    assert cells[2:8] == ["40.00 / 38.00", "2.50x / 2.40x", "0.960", "0.9980", "0.9995", "0.990"]
