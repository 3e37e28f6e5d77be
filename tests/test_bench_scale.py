"""benchmarks/bench_scale.py part (a) and the /proc readers it shares in benchmarks/_common.py:
a tiny run against the session's PostgreSQL keeps the script in step with the store."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import BENCHMARKS, benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("bench_scale") as module:
        yield module


def test_the_server_tree_is_read_from_proc(bench) -> None:
    common = sys.modules["_common"]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert child.pid in common.process_tree(os.getpid())
        assert common.tree_pss(os.getpid()) > common.tree_pss(child.pid) > 0
        assert common.tree_cpu_seconds(os.getpid()) > 0
    finally:
        child.kill()
        child.wait()


def test_a_stopped_process_counts_its_pause(bench) -> None:
    script = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from _common import Paused\n"
        "with Paused() as paused:\n    print('in', flush=True); time.sleep(1.5)\n"
        "print(paused.seconds)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(BENCHMARKS)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline() == "in\n"
    os.kill(child.pid, signal.SIGSTOP)
    time.sleep(1.0)
    os.kill(child.pid, signal.SIGCONT)
    out, _ = child.communicate(timeout=30)
    assert 0.8 < float(out) < 1.5


def test_a_call_holding_the_gil_is_no_pause(bench) -> None:
    common = sys.modules["_common"]
    with common.Paused() as paused:
        started = time.monotonic()
        sum(range(100_000_000))  # one C call: the watcher thread waits for the GIL throughout
    assert paused.seconds == 0.0 and time.monotonic() - started > 0.6  # past the gap


def test_ef_sweep_takes_pgvectors_range(bench) -> None:
    assert bench.ef_values("40, 64,") == [40, 64] and bench.ef_values("") == []
    for wrong in ("0", "1001", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.ef_values(wrong)


def test_pg_load_takes_indexed_bulk_or_both(bench) -> None:
    assert bench.pg_loads("indexed, bulk") == "indexed,bulk"
    for wrong in ("fast", "bulk,bulk", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.pg_loads(wrong)


@pytest.mark.server
def test_part_a_measures_faiss_and_both_pgvector_loads(bench, pg_server, tmp_path) -> None:
    args = argparse.Namespace(
        dim=32, queries=20, warmup=5, pg_load="indexed,bulk", ef_sweep=[10, 40]
    )
    faiss, indexed, bulk = bench.measure_size(600, args, pg_server, tmp_path)
    assert [e.name for e in (faiss, indexed, bulk)] == [
        "FAISS",
        "pgvector indexed",
        "pgvector bulk",
    ]
    assert indexed.build_s is None and bulk.build_s > 0 and faiss.build_s > 0
    for engine in (faiss, indexed, bulk):
        assert engine.plain.recall >= 0.95 and engine.filtered.recall >= 0.95
        assert engine.index_bytes > 0 and engine.build_memory > 0 and engine.query_memory > 0
    for engine in (indexed, bulk):
        assert [ef for ef, _, _ in engine.curve] == [10, 40]
        (_, small, _), (_, large, large_filtered) = engine.curve
        assert large.recall >= small.recall and large_filtered.recall >= 0.95
    assert faiss.curve == []
