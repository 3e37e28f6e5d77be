"""OpenVINO export (fp32 and NNCF int8) and the OpenVINO backend, on the tiny ViT."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import draw_album, draw_photo, once, vitsearch
from vitsearch import app
from vitsearch.config import load_settings
from vitsearch.errors import ConfigError, ModelMismatchError, ModelNotAvailableError
from vitsearch.model import load_embedder
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.choice.runtime import EXPORTS_FOLDER
from vitsearch.model.exported.loader import load_exported
from vitsearch.model.exported.manifest import PROCESSOR_FILE, read_manifest
from vitsearch.model.pytorch.exporter import export_model, export_onnx

pytestmark = pytest.mark.slow

for extra in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(extra, reason="the OpenVINO export starts from the ONNX graph")
NEEDS = "needs the openvino extra: pip install -e '.[openvino]'"
ov = pytest.importorskip("openvino", reason=NEEDS)
pytest.importorskip("nncf", reason=NEEDS)

from vitsearch.model.exported.openvino_backend import (  # noqa: E402 (only with openvino installed)
    WEIGHTS_FILE,
    XML_FILE,
    OpenVinoEmbedder,
    require_openvino,
)

TOLERANCE = {"fp32": 0.999, "int8": 0.99}
WEIGHT_SIZE = 32 * 32  # the tiny ViT's smallest weight matrix; biases and norms are smaller


def photos(folder: Path, count: int = 6) -> list[Image.Image]:
    return [
        Image.open(draw_photo(folder / f"p{i}.png", seed=i, fmt="PNG")).convert("RGB")
        for i in range(count)
    ]


def openvino_embedder(export: Path, **flags) -> OpenVinoEmbedder:
    return load_exported(str(export), threads=1, **flags)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def weight_types(xml: Path) -> set[str]:
    """Element types of the IR's weight-sized constants (what the weights are stored as)."""
    model = ov.Core().read_model(str(xml))
    return {
        op.get_element_type().get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant" and np.prod(op.get_output_shape(0)) >= WEIGHT_SIZE
    }


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    return load_embedder(str(tiny_model), threads=1)  # cpu fp32


@pytest.fixture(scope="module")
def exports(reference, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("openvino")
    made = {}
    for precision in ("fp32", "int8"):
        made[precision] = root / precision
        quantize = None if precision == "fp32" else precision
        export_model(reference, made[precision], fmt="openvino", quantize=quantize)
    return made


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_export_matches_torch(precision: str, reference, exports, tmp_path: Path) -> None:
    images = photos(tmp_path)
    expected = reference.embed_images(images)
    openvino = openvino_embedder(exports[precision])
    got = openvino.embed_images(images)
    assert isinstance(openvino, OpenVinoEmbedder)
    assert got.vectors.shape == (6, 32) and got.vectors.dtype == np.float32
    assert cosines(expected.vectors, got.vectors).min() >= TOLERANCE[precision]
    # a random tiny ViT's top labels are near ties, which int8 rounding may swap (seen on an
    # AVX2-only EPYC): int8 keeps the top label among fp32's first three
    within = 1 if precision == "fp32" else 3
    for mine, theirs in zip(got.labels, expected.labels, strict=True):
        assert mine[0].label in [label.label for label in theirs[:within]]
    assert all(len(labels) == 5 for labels in got.labels)
    assert (openvino.precision, openvino.device, openvino.has_labels) == (precision, "cpu", True)
    assert openvino.info.fingerprint == f"{reference.info.fingerprint}+openvino-{precision}"
    assert np.array_equal(openvino.preprocess(images[0]), reference.preprocess(images[0]))


def test_fp32_labels_score_as_torch(reference, exports, tmp_path: Path) -> None:
    images = photos(tmp_path, 3)
    expected = reference.embed_images(images).labels
    got = openvino_embedder(exports["fp32"]).embed_images(images).labels
    for mine, theirs in zip(got, expected, strict=True):
        assert [lab.label for lab in mine] == [lab.label for lab in theirs]
        assert np.allclose([lab.score for lab in mine], [lab.score for lab in theirs], atol=1e-4)


def test_int8_ir_stores_its_weights_in_8_bits(exports) -> None:
    assert weight_types(exports["fp32"] / XML_FILE) == {"f32"}
    # NNCF's asymmetric int8 keeps each weight as a u8 plus a per-channel zero point and scale
    assert weight_types(exports["int8"] / XML_FILE) == {"u8"}
    fp32_bytes = (exports["fp32"] / WEIGHTS_FILE).stat().st_size
    assert (exports["int8"] / WEIGHTS_FILE).stat().st_size < fp32_bytes / 2


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dynamic_batch(precision: str, exports, tmp_path: Path) -> None:
    openvino = openvino_embedder(exports[precision])
    pixels = np.stack([openvino.preprocess(image) for image in photos(tmp_path, 3)])
    together = openvino.embed(pixels).vectors
    alone = np.concatenate([openvino.embed(pixels[i : i + 1]).vectors for i in range(3)])
    assert together.shape == alone.shape == (3, 32)
    # weights only are int8: no activation scale is shared across a batch, so batch-mates
    # leave a vector as it is, in int8 too
    assert np.allclose(together, alone, atol=1e-5)


def test_threads_and_precision_reach_the_compiled_model(exports) -> None:
    openvino = openvino_embedder(exports["fp32"])
    assert openvino._compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert openvino._compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_manifest_says_what_and_whence(reference, exports) -> None:
    files = {XML_FILE, WEIGHTS_FILE, PROCESSOR_FILE, MANIFEST_FILE}
    assert {p.name for p in exports["int8"].iterdir()} == files
    fp32 = json.loads((exports["fp32"] / MANIFEST_FILE).read_text())
    int8 = json.loads((exports["int8"] / MANIFEST_FILE).read_text())
    assert fp32["format"] == int8["format"] == "vitsearch-openvino"
    assert fp32["source_fingerprint"] == reference.info.fingerprint
    assert (fp32["precision"], fp32["quantization"]) == ("fp32", None)
    assert int8["quantization"]["method"].startswith("nncf.compress_weights")
    assert "openvino" in int8["versions"]
    for manifest, tolerance in ((fp32, 0.999), (int8, 0.99)):
        assert manifest["verification"]["passed"]
        assert manifest["verification"]["tolerance"] == tolerance


def test_an_onnx_export_replaced_by_openvino_keeps_no_onnx_model(reference, tmp_path) -> None:
    out = tmp_path / "export"
    export_onnx(reference, out)
    export_model(reference, out, fmt="openvino")
    files = {p.name for p in out.iterdir()}
    assert files == {XML_FILE, WEIGHTS_FILE, PROCESSOR_FILE, MANIFEST_FILE}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind


def test_backend_must_fit_the_export(exports, tiny_model: Path, home: Path) -> None:
    settings = load_settings(environ={}, model=str(exports["int8"]), threads=1)
    assert isinstance(app.load_model(settings), OpenVinoEmbedder)  # auto takes the export's own
    assert isinstance(app.load_model(settings.replace(backend="openvino")), OpenVinoEmbedder)
    with pytest.raises(ConfigError, match="is for openvino, not onnx; use --backend openvino"):
        app.load_model(settings.replace(backend="onnx"))
    with pytest.raises(ConfigError, match="is int8, not fp32"):
        app.load_model(settings.replace(precision="fp32"))
    # with a checkpoint, --backend openvino makes its export in the home, once, as onnx does
    checkpoint = settings.replace(model=str(tiny_model), backend="openvino", home=home)
    made = app.load_model(checkpoint)
    assert isinstance(made, OpenVinoEmbedder) and made.precision == "int8"
    [export] = [p for p in (home / EXPORTS_FOLDER).iterdir() if p.is_dir() and "openvino" in p.name]
    assert read_manifest(export).verification["passed"]
    assert app.load_model(checkpoint.replace(precision="fp32")).precision == "fp32"
    with pytest.raises(ConfigError, match="OpenVINO runs fp32 or int8 here, not bf16"):
        app.load_model(checkpoint.replace(precision="bf16"))


def test_damaged_or_incomplete_ir_is_a_clear_error(exports, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(exports["fp32"], tmp_path / "broken"))
    (broken / XML_FILE).write_text("<net><this is not IR")
    with pytest.raises(
        ModelNotAvailableError, match=r"damaged or not OpenVINO IR.*vitsearch export"
    ):
        openvino_embedder(broken)
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelNotAvailableError, match=r"has no model\.xml and model\.bin"):
        openvino_embedder(broken)


def test_missing_packages_give_the_install_hint(
    reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hint = r"pip install 'vitsearch\[openvino\]'"
    monkeypatch.setitem(sys.modules, "nncf", None)  # as if not installed
    with pytest.raises(ConfigError, match=f"needs the nncf package; .*{hint}"):
        export_model(reference, tmp_path / "int8", fmt="openvino", quantize="int8")
    assert not (tmp_path / "int8").exists()
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ConfigError, match=f"needs openvino; .*{hint}"):
        require_openvino()


def test_an_openvino_library_refuses_other_backends(exports, home: Path, tmp_path: Path) -> None:
    built = load_settings(environ={}, home=home, model=str(exports["int8"]), threads=1)
    album = draw_album(tmp_path / "album", 3)
    once(built, write=True).index([album[0].parent])
    assert once(built).status().as_dict()["backend"] == "openvino-int8"
    source = json.loads((exports["int8"] / MANIFEST_FILE).read_text())["source_name"]
    torch = built.replace(model=source, backend="torch")
    with pytest.raises(ModelMismatchError, match=r"built with model .*\+openvino-int8"):
        once(torch).search_image(album[0], k=1)
    # auto follows the library's backend: the checkpoint's own OpenVINO int8, made in the
    # home, embeds as the export did (NNCF's weight compression is data-free)
    hits = once(built.replace(model=source)).search_image(album[0], k=1)
    assert hits[0].path == str(album[0]) and hits[0].score > 0.999


def test_cli_export_then_index_and_search_with_openvino(cli_env: dict, tmp_path: Path) -> None:
    album = draw_album(tmp_path / "album", 4)
    out = tmp_path / "exported"

    def run(*args: str) -> subprocess.CompletedProcess:
        # an export fixes its backend and precision: no pin
        return vitsearch(
            *args, env={**cli_env, "VITSEARCH_BACKEND": "auto", "VITSEARCH_PRECISION": "auto"}
        )

    made = run("export", "--format", "openvino", "--quantize", "int8", "--out", str(out))
    assert "openvino int8" in made.stdout and "min cosine" in made.stdout
    assert "INFO" not in made.stdout  # NNCF's own report stays out of the result
    library = ("--model", str(out), "--home", str(tmp_path / "ov-home"))
    run("index", str(tmp_path / "album"), *library)
    hits = json.loads(run("search", str(album[1]), "--json", *library).stdout)
    assert hits[0]["path"] == str(album[1])
    status = json.loads(run("status", "--json", *library).stdout)
    assert (status["backend"], status["precision"]) == ("openvino-int8", "int8")
    assert status["model_fingerprint"].endswith("+openvino-int8")
