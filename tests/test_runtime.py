"""`auto` picks the backend and precision from the hardware, and a library keeps its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import draw_album, draw_photo
from vitsearch import app
from vitsearch.model import runtime
from vitsearch.model.runtime import EXPORTS_FOLDER, choose_runtime, export_directory
from vitsearch.records import ModelInfo

AMX = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
ZEN4 = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"})
AVX2_ONLY = frozenset({"avx2", "fma"})


def built_with(backend_suffix: str = "") -> ModelInfo:
    return ModelInfo(name="m", fingerprint="sha256:abc|pool=cls+mean" + backend_suffix, dim=8)


def pick(backend="auto", precision="auto", **kwargs) -> tuple[str, str, str]:
    kwargs.setdefault("onnx_installed", True)
    chosen = choose_runtime(backend, precision, "auto", **kwargs)
    return chosen.backend, chosen.device, chosen.precision


def test_auto_on_each_kind_of_cpu() -> None:
    assert pick(flags=AMX) == ("torch", "cpu", "bf16")  # bf16 ~4.5x fp32, ORT int8 ~2.2x
    assert pick(flags=ZEN4) == ("onnx", "cpu", "int8")  # ORT int8 ~5x, bf16 ~3.5x
    assert pick(flags=AVX2_ONLY) == ("onnx", "cpu", "int8")  # ORT int8 ~1.5x, bf16 ~1/7x
    # without the onnx extra: the fastest torch precision the CPU has
    assert pick(flags=ZEN4, onnx_installed=False) == ("torch", "cpu", "bf16")
    assert pick(flags=AVX2_ONLY, onnx_installed=False) == ("torch", "cpu", "fp32")


def test_auto_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick(flags=AVX2_ONLY) == ("torch", "cuda", "fp16")


def test_what_is_asked_for_wins() -> None:
    assert pick("torch", flags=AVX2_ONLY) == ("torch", "cpu", "fp32")
    assert pick(precision="fp32", flags=AMX) == ("torch", "cpu", "fp32")
    assert pick(precision="int8", flags=AVX2_ONLY) == ("torch", "cpu", "int8")
    assert pick("onnx", flags=AMX) == ("onnx", "cpu", "auto")  # the export's own precision
    assert pick(export="onnx", flags=AMX) == ("onnx", "cpu", "auto")
    assert pick(export="openvino", flags=AVX2_ONLY) == ("openvino", "cpu", "auto")
    assert pick("openvino", flags=AMX) == ("openvino", "cpu", "auto")


def test_auto_never_picks_openvino_but_keeps_an_openvino_library() -> None:
    for flags in (AMX, ZEN4, AVX2_ONLY):
        assert pick(flags=flags)[0] != "openvino"
    assert pick(recorded=built_with("+openvino-int8"), flags=AMX) == ("openvino", "cpu", "int8")
    assert pick(recorded=built_with("+openvino-fp32"), flags=ZEN4) == ("openvino", "cpu", "fp32")


def test_a_library_keeps_the_backend_it_was_built_with() -> None:
    assert pick(recorded=built_with("+onnx-int8"), flags=AMX) == ("onnx", "cpu", "int8")
    assert pick(recorded=built_with("+onnx-fp32"), flags=AMX) == ("onnx", "cpu", "fp32")
    assert pick(recorded=built_with("+torch-int8"), flags=AMX) == ("torch", "cpu", "int8")
    # torch fp32/bf16/fp16 agree within tolerance: the fastest of them, never ONNX
    assert pick(recorded=built_with(), flags=AVX2_ONLY) == ("torch", "cpu", "fp32")
    assert pick(recorded=built_with(), flags=AMX) == ("torch", "cpu", "bf16")


@pytest.fixture
def cpu(monkeypatch: pytest.MonkeyPatch):
    """The machine's CPU flags, as the runtime reads them (the hardware is the boundary)."""

    def use(flags: frozenset[str]) -> None:
        monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)

    return use


@pytest.mark.slow
def test_avx2_cpu_indexes_with_a_verified_int8_export_made_once(
    settings, cpu, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    pytest.importorskip("onnxscript", reason="needs the onnx extra")
    cpu(AVX2_ONLY)
    album = draw_album(tmp_path / "album", 6)
    folder = album[0].parent
    app.index_folders(settings, [folder])
    status = app.library_status(settings)
    assert (status["backend"], status["precision"]) == ("onnx-int8", "int8")
    exports = [p for p in (settings.home / EXPORTS_FOLDER).iterdir() if p.is_dir()]
    assert exports == [export_directory(settings, "int8")]
    made = (exports[0] / "model.onnx").stat().st_mtime_ns

    hits = app.search_image(settings, album[0], k=3)
    assert hits[0].path == str(album[0]) and hits[0].score > 0.99

    cpu(AMX)  # the library moved to a bf16 machine: it keeps ONNX int8, nothing is mixed
    draw_photo(folder / "new.png", seed=99)
    app.index_folders(settings, [folder])
    assert app.library_status(settings)["images"] == 7
    assert (exports[0] / "model.onnx").stat().st_mtime_ns == made, "exported again"


@pytest.mark.slow
def test_torch_library_stays_torch_on_an_avx2_cpu(settings, cpu, tmp_path: Path) -> None:
    cpu(AMX)
    folder = draw_album(tmp_path / "album", 3)[0].parent
    app.index_folders(settings, [folder])
    cpu(AVX2_ONLY)
    draw_photo(folder / "new.png", seed=99)
    app.index_folders(settings, [folder])
    status = app.library_status(settings)
    assert (status["backend"], status["images"]) == ("torch", 4)
    assert not (settings.home / EXPORTS_FOLDER).exists()


@pytest.mark.slow
def test_an_export_outside_tolerance_is_remembered_and_torch_fp32_used(
    settings, cpu, tmp_path: Path
) -> None:
    cpu(AVX2_ONLY)
    rejected = export_directory(settings, "int8")
    rejected = rejected.with_name(rejected.name + ".rejected.json")
    rejected.parent.mkdir(parents=True)
    rejected.write_text('{"reason": "min cosine 0.95"}\n')
    app.index_folders(settings, [draw_album(tmp_path / "album", 3)[0].parent])
    status = app.library_status(settings)
    assert (status["backend"], status["precision"]) == ("torch", "fp32")


@pytest.mark.slow
def test_two_first_runs_at_once_export_once(cli_env: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    pytest.importorskip("onnxscript", reason="needs the onnx extra")
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
    exporting = sum(b"exporting it to ONNX" in err for _out, err in outputs)
    assert exporting == 1, "both processes exported"
    home = Path(cli_env["VITSEARCH_HOME"])
    assert len([p for p in (home / EXPORTS_FOLDER).iterdir() if p.is_dir()]) == 1
