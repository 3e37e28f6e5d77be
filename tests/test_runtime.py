"""`auto` picks the backend and precision from the hardware, and a library keeps its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import draw_album, draw_photo, once
from vitsearch.indexer import Summary
from vitsearch.model import Features
from vitsearch.model.choice import runtime
from vitsearch.model.choice.runtime import EXPORTS_FOLDER, choose_runtime, export_directory
from vitsearch.records import ModelInfo

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
AVX2_ONLY = frozenset({"avx2", "fma"})


def built_with(backend_suffix: str = "") -> ModelInfo:
    return ModelInfo(name="m", fingerprint="sha256:abc|pool=cls+mean" + backend_suffix, dim=8)


def pick(backend="auto", precision="auto", **kwargs) -> tuple[str, str, str]:
    kwargs.setdefault("onnx_installed", True)
    kwargs.setdefault("openvino_installed", False)
    device = kwargs.pop("device", "cpu")  # a CPU's choices, on a machine with a GPU too
    chosen = choose_runtime(backend, precision, device, **kwargs)
    return chosen.backend, chosen.device, chosen.precision


def timed(**kwargs) -> tuple[str, ...]:
    """The candidates `auto` times on this (faked) CPU."""
    kwargs.setdefault("onnx_installed", True)
    kwargs.setdefault("openvino_installed", False)
    chosen = choose_runtime("auto", "auto", "cpu", **kwargs)
    assert chosen.backend == "auto", chosen
    return tuple(c.name for c in chosen.candidates)


EVERY = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8")


def test_auto_times_what_each_kind_of_cpu_can_run() -> None:
    # bf16 only with bf16 instructions (without them it is ~7x slower than fp32)
    assert timed(flags=AMX) == EVERY
    assert timed(flags=ZEN4) == EVERY
    assert timed(flags=AVX2_ONLY) == ("torch-fp32", "onnx-fp32", "onnx-int8")
    # without ONNX Runtime and the exporter: torch only; one candidate needs no timing
    assert timed(flags=ZEN4, onnx_installed=False) == ("torch-fp32", "torch-bf16")
    assert pick(flags=AVX2_ONLY, onnx_installed=False) == ("torch", "cpu", "fp32")


def test_an_export_nearly_as_fast_as_torch_is_kept_for_its_quick_start() -> None:
    # as timed on an AVX2-only EPYC: torch fp32 and ONNX Runtime fp32 within 1%
    avx2 = {"torch-fp32": 2.63, "onnx-fp32": 2.62, "onnx-int8": 1.80, "openvino-int8": 2.53}
    assert runtime.preferred(avx2) == "onnx-fp32"
    # as on a Zen 5: bf16 well ahead of ONNX Runtime, OpenVINO int8 ahead of bf16
    assert runtime.preferred({"torch-bf16": 17.6, "onnx-int8": 11.3}) == "torch-bf16"
    assert runtime.preferred({"torch-bf16": 17.6, "openvino-int8": 19.8}) == "openvino-int8"
    assert runtime.preferred({"torch-fp32": 10.0, "onnx-int8": 8.9}) == "torch-fp32"
    assert runtime.preferred({"torch-fp32": 10.0, "onnx-int8": 9.0}) == "onnx-int8"
    assert runtime.preferred({"torch-fp32": 3.0, "torch-bf16": 9.0}) == "torch-bf16"


@pytest.mark.slow  # imports torch: seconds the fast tier does without
def test_auto_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick(flags=AVX2_ONLY, device="auto") == ("torch", "cuda", "fp16")


def test_what_is_asked_for_wins() -> None:
    assert pick("torch", flags=AVX2_ONLY) == ("torch", "cpu", "fp32")
    assert pick(precision="fp32", flags=AMX) == ("torch", "cpu", "fp32")
    assert pick(precision="int8", flags=AVX2_ONLY) == ("torch", "cpu", "int8")
    assert pick("onnx", flags=AMX) == ("onnx", "cpu", "auto")  # the export's own precision
    assert pick(export="onnx", flags=AMX) == ("onnx", "cpu", "auto")
    assert pick(export="openvino", flags=AVX2_ONLY) == ("openvino", "cpu", "auto")
    assert pick("openvino", flags=AMX) == ("openvino", "cpu", "auto")


def test_auto_times_openvino_int8_where_installed_and_keeps_an_openvino_library() -> None:
    for flags in (AMX, ZEN4, AVX2_ONLY):
        assert timed(flags=flags, openvino_installed=True)[-1] == "openvino-int8"
        assert "openvino" not in " ".join(timed(flags=flags))
    # it is converted from the ONNX graph: without ONNX, no OpenVINO either
    assert timed(flags=ZEN4, onnx_installed=False, openvino_installed=True) == (
        "torch-fp32",
        "torch-bf16",
    )
    assert timed(recorded=built_with(), flags=AMX, openvino_installed=True) == (
        "torch-fp32",
        "torch-bf16",
    )
    assert pick(recorded=built_with("+openvino-int8"), flags=AMX) == ("openvino", "cpu", "int8")
    assert pick(recorded=built_with("+openvino-fp32"), flags=ZEN4) == ("openvino", "cpu", "fp32")


def test_a_library_keeps_the_backend_it_was_built_with() -> None:
    assert pick(recorded=built_with("+onnx-int8"), flags=AMX) == ("onnx", "cpu", "int8")
    assert pick(recorded=built_with("+onnx-fp32"), flags=AMX) == ("onnx", "cpu", "fp32")
    assert pick(recorded=built_with("+torch-int8"), flags=AMX) == ("torch", "cpu", "int8")
    # torch fp32/bf16/fp16 agree within tolerance: the fastest of them, never ONNX
    assert pick(recorded=built_with(), flags=AVX2_ONLY) == ("torch", "cpu", "fp32")
    assert timed(recorded=built_with(), flags=AMX) == ("torch-fp32", "torch-bf16")


def test_a_library_fingerprint_names_its_backend_and_is_written_back_unchanged() -> None:
    """Libraries store the fingerprint string as ever; backend and precision are read from it
    (a feature tag's ``cls+mean`` is no backend) and written back by ``made_with``."""
    made = {
        "": ("torch", "auto", "torch"),
        "+torch-int8": ("torch", "int8", "torch-int8"),
        "+onnx-fp32": ("onnx", "fp32", "onnx-fp32"),
        "+onnx-int8": ("onnx", "int8", "onnx-int8"),
        "+openvino-int8": ("openvino", "int8", "openvino-int8"),
    }
    for suffix, (backend, precision, made_by) in made.items():
        info = built_with(suffix)
        assert (info.backend, info.precision, info.made_by) == (backend, precision, made_by)
        assert info.source == "sha256:abc|pool=cls+mean"
        again = ModelInfo.made_with("m", info.source, 8, {}, backend, precision)
        assert again == info and again.fingerprint == info.fingerprint
    with pytest.raises(ValueError, match="onnx-bf16"):
        ModelInfo.made_with("m", "sha256:abc", 8, {}, "onnx", "bf16")


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """The machine's CPU flags, as the runtime reads them (the hardware is the boundary)."""

    def use(flags: frozenset[str]) -> None:
        monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)

    return use


class QuietMachine:
    """/proc/stat as an idle machine shows it: a timing here is never redone for load (the
    machine is the boundary; a real neighbour's load would make these tests flaky)."""

    def busy_cores(self) -> float:
        return 0.0


@pytest.fixture
def auto(settings, monkeypatch: pytest.MonkeyPatch):
    """The test library's settings with the backend left to `auto` (fast to time: tiny ViT)."""
    monkeypatch.setattr(runtime, "OtherProcesses", QuietMachine)
    # a job of any size times the backends here (a few photos stand for a large job)
    return settings.replace(backend="auto", precision="auto", time_backends_from=1)


def source(settings) -> runtime.Source:
    """What the app hands the runtime for these settings."""
    features = Features(settings.layer, settings.pool)
    return runtime.Source(
        settings.model, settings.home, settings.threads, features, settings.batch_size
    )


def measurement(settings) -> dict:
    [found] = (settings.home / EXPORTS_FOLDER).glob("measured-*.json")
    return json.loads(found.read_text())


BACKEND_OF = {"torch-fp32": "torch", "torch-bf16": "torch"}  # torch fp32/bf16 agree


@pytest.mark.slow
def test_auto_times_the_candidates_once_and_keeps_the_fastest(auto, cpu, tmp_path: Path) -> None:
    cpu(ZEN4)  # every candidate (bf16 runs, slowly, on any x86 CPU torch supports)
    album = draw_album(tmp_path / "album", 6)
    folder = album[0].parent
    once(auto, write=True).index([folder])
    measured = measurement(auto)
    rates = {r["candidate"]: r["images_per_second"] for r in measured["results"]}
    openvino = runtime.openvino_available()  # the openvino extra: its int8 is timed too
    assert set(rates) == set(EVERY) | ({"openvino-int8"} if openvino else set())
    assert measured["chosen"] == runtime.preferred(rates) and min(rates.values()) > 0
    status = once(auto).status().as_dict()
    assert status["backend"] == BACKEND_OF.get(measured["chosen"], measured["chosen"])
    made_here = [("fp32", "onnx"), ("int8", "onnx")] + ([("int8", "openvino")] if openvino else [])
    expected = [export_directory(source(auto), *made) for made in made_here]
    exports = sorted(p for p in (auto.home / EXPORTS_FOLDER).iterdir() if p.is_dir())
    assert exports == sorted(expected)
    for int8 in expected[1:]:
        verification = json.loads((int8 / "vitsearch-export.json").read_text())["verification"]
        assert verification["passed"] and verification["neighbour_overlap"] >= 0.95
    made = {p: (p / "vitsearch-export.json").stat().st_mtime_ns for p in exports}

    hits = once(auto).search_image(album[0], k=3)
    assert hits[0].path == str(album[0]) and hits[0].score > 0.99

    draw_photo(folder / "new.png", seed=99)  # the next run reads the measurement
    once(auto, write=True).index([folder])
    assert measurement(auto) == measured
    # a torch library in this home uses the torch timings made here, not new ones
    torch_home = auto.replace(home=auto.home.parent / "torch-home")
    once(torch_home.replace(backend="torch"), write=True).index([folder])
    shutil.copytree(auto.home / EXPORTS_FOLDER, torch_home.home / EXPORTS_FOLDER)
    once(torch_home).search_image(album[0], k=1)
    assert measurement(torch_home) == measured
    assert {p: (p / "vitsearch-export.json").stat().st_mtime_ns for p in exports} == made, (
        "exported again"
    )
    assert once(auto).status().as_dict()["images"] == 7


@pytest.mark.slow
def test_another_cpu_is_measured_again_within_the_librarys_backend(
    auto, cpu, tmp_path: Path
) -> None:
    cpu(AMX)
    folder = draw_album(tmp_path / "album", 3)[0].parent
    once(auto.replace(backend="torch"), write=True).index([folder])  # a torch library
    cpu(ZEN4)
    draw_photo(folder / "new.png", seed=99)
    once(auto, write=True).index([folder])
    measured = measurement(auto)
    assert {r["candidate"] for r in measured["results"]} == {"torch-fp32", "torch-bf16"}
    status = once(auto).status().as_dict()
    assert (status["backend"], status["images"]) == ("torch", 4)
    assert not [p for p in (auto.home / EXPORTS_FOLDER).iterdir() if p.is_dir()], "exported"


@pytest.mark.slow
def test_an_export_outside_tolerance_is_remembered_and_not_timed(auto, cpu, tmp_path: Path) -> None:
    cpu(AVX2_ONLY)
    for precision, backend in [("fp32", "onnx"), ("int8", "onnx"), ("int8", "openvino")]:
        rejected = export_directory(source(auto), precision, backend)
        rejected = rejected.with_name(rejected.name + ".rejected.json")
        rejected.parent.mkdir(parents=True, exist_ok=True)
        rejected.write_text('{"reason": "top-10 neighbours kept 0.72"}\n')
    once(auto, write=True).index([draw_album(tmp_path / "album", 3)[0].parent])
    status = once(auto).status().as_dict()
    assert (status["backend"], status["precision"]) == ("torch", "fp32")
    results = {r["candidate"]: r for r in measurement(auto)["results"]}
    assert results["onnx-int8"] == {"candidate": "onnx-int8", "rejected": True}


@pytest.mark.slow  # the check lives beside the exporter, which imports torch
def test_the_check_refuses_an_export_that_loses_neighbours() -> None:
    """Cosines can all look fine while the neighbours a user sees change."""
    from vitsearch.model.pytorch.exporter import Verification, neighbour_overlap  # torch: late

    rng = np.random.default_rng(0)
    expected = rng.normal(size=(40, 16)).astype(np.float32)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    noisy = expected + 0.35 * rng.normal(size=expected.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    assert neighbour_overlap(expected, expected) == 1.0
    assert neighbour_overlap(expected, noisy) < 0.95
    check = Verification(40, 0.995, 0.998, 0.99, None, neighbour_overlap(expected, noisy))
    assert check.min_cosine >= check.tolerance and not check.passed


@pytest.mark.slow
def test_two_first_runs_at_once_export_once(cli_env: dict, tmp_path: Path) -> None:
    pytest.importorskip(
        "onnxruntime", reason="needs onnxruntime and onnxscript (vitsearch dependencies)"
    )
    pytest.importorskip(
        "onnxscript", reason="needs onnxruntime and onnxscript (vitsearch dependencies)"
    )
    photo = draw_photo(tmp_path / "query.jpg", seed=3)
    # --backend onnx with a checkpoint takes the same first-run export as auto on a CPU
    # without AMX (which a subprocess cannot be made to believe it is)
    command = [sys.executable, "-m", "vitsearch", "classify", str(photo), "--backend", "onnx"]
    runs = [
        subprocess.Popen(command, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _out, err in outputs]
    exporting = sum(b"to ONNX" in err and b"exporting" in err for _out, err in outputs)
    assert exporting == 1, "both processes exported"
    home = Path(cli_env["VITSEARCH_HOME"])
    assert len([p for p in (home / EXPORTS_FOLDER).iterdir() if p.is_dir()]) == 1


@pytest.mark.slow
def test_a_timing_made_beside_a_busy_program_is_made_again(auto, cpu, tmp_path: Path) -> None:
    from vitsearch.model.choice.runtime import RETIMINGS, measurement_file, write_measurement

    cpu(ZEN4)
    album = draw_album(tmp_path / "album", 3)
    once(auto.replace(backend="torch"), write=True).index([album[0].parent])  # a torch library
    path = measurement_file(source(auto))
    slow_bf16 = [
        {"candidate": "torch-fp32", "images_per_second": 9.0},
        {"candidate": "torch-bf16", "images_per_second": 1.0},
    ]
    write_measurement(path, slow_bf16, auto.threads, busy=1.3)  # another job held a core
    once(auto).search_image(album[0], k=1)  # a query keeps the timing it finds: no minute lost
    assert json.loads(path.read_text())["results"] == slow_bf16
    draw_photo(album[0].parent / "new.jpg", seed=99)  # work for the writer's model
    once(auto, write=True).index([album[0].parent])  # the writer times them again
    again = json.loads(path.read_text())
    assert again["timings"] == 2 and again["results"] != slow_bf16

    write_measurement(path, slow_bf16, auto.threads, busy=1.3, timings=RETIMINGS)
    draw_photo(album[0].parent / "newer.jpg", seed=98)
    once(auto, write=True).index([album[0].parent])  # retries used up: the timings stand
    assert json.loads(path.read_text())["results"] == slow_bf16


@pytest.mark.slow
def test_a_small_first_job_starts_at_once_and_its_rate_is_the_photos_alone(
    auto, cpu, tmp_path: Path
) -> None:
    """A first run of a few photos pays no exports and no timing: a large job's cost."""
    cpu(ZEN4)  # a CPU with every candidate
    small = auto.replace(time_backends_from=4)
    folder = draw_album(tmp_path / "album", 3)[0].parent
    summary = once(small, write=True).index([folder])
    assert not (small.home / EXPORTS_FOLDER).exists(), "timed or exported for 3 photos"
    status = once(small).status().as_dict()
    assert (status["backend"], status["precision"]) == ("torch", "fp32")
    assert summary.embedded == 3 and 0 < summary.setup_seconds < summary.seconds
    assert summary.images_per_second == pytest.approx(3 / (summary.seconds - summary.setup_seconds))
    first_run = Summary(new=40, embedded=40, seconds=60.0, setup_seconds=50.0)
    assert "(4.0 images/s; 50.0s of it setting up the model, once)" in first_run.line()
    # a job of time_backends_from photos or more, larger than the library, times every
    # candidate as for a new library, and the library runs the one that won
    for seed in range(4):
        draw_photo(folder / f"new{seed}.png", seed=90 + seed)
    once(small, write=True).index([folder])
    measured = measurement(small)
    openvino = {"openvino-int8"} if runtime.openvino_available() else set()
    assert {r["candidate"] for r in measured["results"]} == set(EVERY) | openvino
    status = once(small).status().as_dict()
    chosen = measured["chosen"]
    assert (status["backend"], status["images"]) == (BACKEND_OF.get(chosen, chosen), 7)


@pytest.mark.slow
def test_only_index_and_watch_time_the_backends(auto, cpu, tmp_path: Path) -> None:
    """embed, classify and queries never time, not even again after a busy timing."""
    from vitsearch.model.choice.runtime import measurement_file, write_measurement

    cpu(ZEN4)
    photo = draw_photo(tmp_path / "photo.png", seed=5)
    once(auto).embed_to_file([photo], tmp_path / "out.npy")
    once(auto).classify([photo])
    assert not (auto.home / EXPORTS_FOLDER).exists(), "timed or exported outside index/watch"
    path = measurement_file(source(auto))
    busy = [
        {"candidate": "torch-fp32", "images_per_second": 9.0},
        {"candidate": "torch-bf16", "images_per_second": 1.0},
    ]
    write_measurement(path, busy, auto.threads, busy=1.3)  # timed beside another job
    once(auto).embed_to_file([photo], tmp_path / "again.npy")
    assert json.loads(path.read_text())["results"] == busy


def fastest_is(settings, winner: str, flags: frozenset[str]) -> None:
    """A timing on record for this checkpoint and CPU in which ``winner`` is the fastest, so
    the test does not hang on what the machine running it would pick."""
    from vitsearch.model.choice.runtime import measurement_file, write_measurement

    names = [
        c.name
        for c in runtime.cpu_candidates(flags, onnx=True, openvino=runtime.openvino_available())
    ]
    rates = [{"candidate": n, "images_per_second": 10.0 if n == winner else 1.0} for n in names]
    write_measurement(measurement_file(source(settings)), rates, settings.threads)


@pytest.mark.slow
def test_a_small_torch_library_moves_to_the_faster_backend_before_a_large_job(
    auto, cpu, tmp_path: Path
) -> None:
    cpu(ZEN4)
    small = auto.replace(time_backends_from=4)
    album = draw_album(tmp_path / "album", 2)
    folder = album[0].parent
    once(small, write=True).index([folder])  # a trial: torch at once
    before = {hit.path: hit.id for hit in once(small).photos(range(1, 10))}
    assert once(small).status().as_dict()["backend"] == "torch"
    fastest_is(small, "onnx-fp32", ZEN4)
    for seed in range(5):
        draw_photo(folder / f"new{seed}.png", seed=90 + seed)
    summary = once(small, write=True).index([folder])  # a large job: the library moves first
    assert (summary.new, summary.unchanged) == (5, 2)
    status = once(small).status().as_dict()
    assert (status["backend"], status["images"], status["vectors"]) == ("onnx-fp32", 7, 7)
    after = {hit.path: hit.id for hit in once(small).photos(range(1, 20))}
    assert {path: after[path] for path in before} == before, "the trial's photos kept their ids"
    hits = once(small).search_image(album[0], k=1)
    assert hits[0].path == str(album[0]) and hits[0].score > 0.99


@pytest.mark.slow
def test_a_library_with_a_photo_out_of_reach_stays_on_its_backend(
    auto, cpu, tmp_path: Path
) -> None:
    cpu(ZEN4)
    small = auto.replace(time_backends_from=4)
    away = draw_album(tmp_path / "drive", 1)[0].parent  # an unplugged drive, later
    folder = draw_album(tmp_path / "album", 1)[0].parent
    once(small, write=True).index([away, folder])
    shutil.rmtree(away)
    fastest_is(small, "onnx-fp32", ZEN4)
    for seed in range(5):
        draw_photo(folder / f"new{seed}.png", seed=90 + seed)
    once(small, write=True).index([away, folder])
    status = once(small).status().as_dict()
    assert (status["backend"], status["images"], status["offline"]) == ("torch", 7, 1)
