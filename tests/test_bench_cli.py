"""The pure helpers of benchmarks/bench_cli.py: the commands timed and the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_cli") as module:
        yield module


def test_each_library_gets_the_four_queries(bench) -> None:
    photos = [Path(f"/photos/p{i}.jpg") for i in range(6)]
    commands = bench.queries("onnx-int8", photos)
    assert [c.argv[2] for c in commands] == ["search", "similar", "status", "classify"]
    assert commands[3].argv[3:] == tuple(str(p) for p in photos[:5])
    assert {c.library for c in commands} == {"onnx-int8"}


def test_the_table_gives_ratios_to_both_baselines_and_the_target(bench, capsys) -> None:
    bare = bench.Command("python -c pass", ("-c", "pass"))
    torch = bench.Command('python -c "import torch"', ("-c", "import torch"))
    fast, slow = bench.queries("onnx-int8", [Path("/p.jpg")] * 5)[:2]
    times = {bare: [0.1, 0.1], torch: [2.0, 2.0], fast: [1.0, 1.0], slow: [8.0, 8.0]}
    imports = {fast: [], slow: ["torch", "transformers"]}
    bench.report([bare, torch, fast, slow], times, imports, (1.0,), (2.0,), 0.5, 2)
    rows = capsys.readouterr().out.splitlines()
    assert any(r.startswith("onnx-int8: search PHOTO") and r.endswith("- ok") for r in rows)
    assert any("torch, transformers SLOW" in r and " 4.00 " in r for r in rows)
