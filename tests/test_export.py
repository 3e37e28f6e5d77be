"""ONNX export, the ONNX Runtime backend and torch int8, on the tiny ViT through the real path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import TINY_LABELS, draw_photo, save_tiny_vit, vitsearch
from vitsearch.errors import ConfigError, ModelNotAvailableError
from vitsearch.model import Features, load_embedder
from vitsearch.model.checkpoint import MANIFEST_FILE
from vitsearch.model.exported.loader import load_onnx_embedder
from vitsearch.model.exported.manifest import PROCESSOR_FILE, BackendMismatchError
from vitsearch.model.exported.onnx_backend import MODEL_FILE
from vitsearch.model.pytorch.exporter import export_onnx, verify_export
from vitsearch.model.pytorch.quantize import quantize_int8

pytestmark = pytest.mark.slow

for extra in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(
        extra, reason="needs onnxruntime, onnx and onnxscript (vitsearch dependencies)"
    )


def photos(folder: Path, count: int = 6, start: int = 0) -> list[Image.Image]:
    return [
        Image.open(draw_photo(folder / f"p{i}.png", seed=i, fmt="PNG")).convert("RGB")
        for i in range(start, start + count)
    ]


def torch_embedder(model: Path, layer: int = -1, pool: str = "cls"):
    return load_embedder(str(model), threads=1, features=Features(layer, pool))  # cpu fp32


def onnx_embedder(export: Path, layer: int = -1, pool: str = "cls", **asked):
    return load_onnx_embedder(str(export), threads=1, features=Features(layer, pool), **asked)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


@pytest.fixture(scope="module")
def reference(tiny_model: Path):
    return torch_embedder(tiny_model)


@pytest.fixture(scope="module")
def fp32_export(reference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "fp32"
    export_onnx(reference, out)
    return out


@pytest.fixture(scope="module")
def int8_export(reference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "int8"
    export_onnx(reference, out, quantize="int8")
    return out


def test_fp32_export_matches_torch(reference, fp32_export: Path, tmp_path: Path) -> None:
    images = photos(tmp_path)
    expected = reference.embed_images(images)
    onnx = onnx_embedder(fp32_export)
    got = onnx.embed_images(images)
    assert got.vectors.shape == (6, 32) and got.vectors.dtype == np.float32
    assert cosines(expected.vectors, got.vectors).min() >= 0.999
    assert [labels[0].label for labels in got.labels] == [
        labels[0].label for labels in expected.labels
    ]
    for mine, theirs in zip(got.labels, expected.labels, strict=True):
        assert len(mine) == 5
        assert np.allclose([lab.score for lab in mine], [lab.score for lab in theirs], atol=1e-4)
    assert onnx.has_labels and onnx.precision == "fp32" and onnx.device == "cpu"
    assert (onnx.input_size, onnx.decode_size) == (reference.input_size, reference.decode_size)
    assert np.array_equal(onnx.preprocess(images[0]), reference.preprocess(images[0]))


def test_backends_get_their_own_fingerprints(
    reference, fp32_export: Path, int8_export: Path
) -> None:
    source = reference.info.fingerprint
    assert onnx_embedder(fp32_export).info.fingerprint == f"{source}+onnx-fp32"
    assert onnx_embedder(int8_export).info.fingerprint == f"{source}+onnx-int8"
    assert quantize_int8(reference).info.fingerprint == f"{source}+torch-int8"
    assert reference.info.fingerprint == source and reference.precision == "fp32"


def test_int8_export_stays_close(reference, int8_export: Path, tmp_path: Path) -> None:
    images = photos(tmp_path)
    onnx = onnx_embedder(int8_export)
    got = onnx.embed_images(images).vectors
    assert onnx.precision == "int8"
    assert cosines(reference.embed_images(images).vectors, got).min() >= 0.99


def test_torch_int8_stays_close_and_really_quantizes(reference, tmp_path: Path) -> None:
    images = photos(tmp_path)
    int8 = quantize_int8(reference)
    expected = reference.embed_images(images).vectors
    got = int8.embed_images(images).vectors
    assert int8.precision == "int8" and int8.device == "cpu" and int8.has_labels
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosines(expected, got).min() >= 0.99
    assert not np.allclose(expected, got, atol=1e-6)  # the weights really are int8 now
    assert np.array_equal(reference.embed_images(images).vectors, expected)  # source untouched


def test_precision_int8_loads_torch_int8_with_its_own_fingerprint(
    tiny_model: Path, reference
) -> None:
    int8 = load_embedder(str(tiny_model), threads=1, precision="int8")
    assert int8.precision == "int8" and int8.info.made_by == "torch-int8"
    assert int8.info.fingerprint == reference.info.fingerprint + "+torch-int8"
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        load_embedder(str(tiny_model), threads=1, device="cuda", precision="int8")


@pytest.mark.parametrize("which", ["fp32", "int8"])
def test_dynamic_batch_axis(
    which: str, fp32_export: Path, int8_export: Path, tmp_path: Path
) -> None:
    onnx = onnx_embedder(fp32_export if which == "fp32" else int8_export)
    pixels = np.stack([onnx.preprocess(image) for image in photos(tmp_path, 5)])
    together = onnx.embed(pixels).vectors
    alone = np.concatenate([onnx.embed(pixels[i : i + 1]).vectors for i in range(5)])
    assert together.shape == alone.shape == (5, 32)
    if which == "fp32":
        assert np.allclose(together, alone, atol=1e-5)
    else:
        # Dynamic int8 scales activations over the whole batch, so batch-mates shift a
        # vector a little; it must stay within the int8 tolerance.
        assert cosines(together, alone).min() >= 0.99


def test_manifest_says_what_and_whence(
    reference, fp32_export: Path, int8_export: Path, tiny_model: Path
) -> None:
    assert {p.name for p in fp32_export.iterdir()} == {MODEL_FILE, PROCESSOR_FILE, MANIFEST_FILE}
    fp32 = json.loads((fp32_export / MANIFEST_FILE).read_text())
    int8 = json.loads((int8_export / MANIFEST_FILE).read_text())
    assert fp32["source_name"] == str(tiny_model)
    assert fp32["source_fingerprint"] == int8["source_fingerprint"] == reference.info.fingerprint
    assert fp32["dim"] == 32 and fp32["opset"] >= 17
    assert fp32["id2label"] == {str(k): v for k, v in TINY_LABELS.items()}
    assert fp32["preprocessing"] == reference.info.preprocessing
    assert (fp32["precision"], fp32["quantization"]) == ("fp32", None)
    assert int8["precision"] == "int8" and int8["quantization"]["dtype"] == "int8"
    for manifest, tolerance in ((fp32, 0.999), (int8, 0.99)):
        check = manifest["verification"]
        assert check["passed"] and check["tolerance"] == tolerance
        assert check["min_cosine"] >= tolerance and check["images"] >= 4
    processor = json.loads((fp32_export / PROCESSOR_FILE).read_text())
    assert processor["size"] == {"height": 32, "width": 32}
    assert (int8_export / MODEL_FILE).stat().st_size < (fp32_export / MODEL_FILE).stat().st_size


def test_headless_checkpoint_exports_without_labels(tmp_path: Path) -> None:
    headless = torch_embedder(save_tiny_vit(tmp_path / "headless", with_head=False))
    export_onnx(headless, tmp_path / "export")
    onnx = onnx_embedder(tmp_path / "export")
    result = onnx.embed_images(photos(tmp_path, 2))
    assert not onnx.has_labels and result.labels == [(), ()]
    assert (
        cosines(result.vectors, headless.embed_images(photos(tmp_path, 2)).vectors).min() >= 0.999
    )


def test_layer_and_pooling_follow_the_embedder(tiny_model: Path, tmp_path: Path) -> None:
    middle = torch_embedder(tiny_model, layer=1, pool="cls+mean")
    export_onnx(middle, tmp_path / "middle")
    onnx = onnx_embedder(tmp_path / "middle")
    images = photos(tmp_path, 4)
    expected = middle.embed_images(images).vectors
    assert onnx.features == middle.features and onnx.info.dim == 64
    assert onnx.info.fingerprint == f"{middle.info.fingerprint}+onnx-fp32"
    assert cosines(expected, onnx.embed_images(images).vectors).min() >= 0.999
    assert onnx_embedder(tmp_path / "middle", layer=1, pool="cls+mean").features == onnx.features
    with pytest.raises(ConfigError, match="layer 1 with cls\\+mean pooling, not layer 2"):
        onnx_embedder(tmp_path / "middle", layer=2, pool="cls+mean")
    int8 = quantize_int8(middle)
    assert int8.features == middle.features
    assert cosines(expected, int8.embed_images(images).vectors).min() >= 0.99


def test_missing_or_damaged_model_onnx_is_a_clear_error(fp32_export: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(fp32_export, tmp_path / "broken"))
    (broken / MODEL_FILE).write_bytes(b"this is not a protobuf" * 100)
    with pytest.raises(ModelNotAvailableError, match=r"damaged or not ONNX.*vitsearch export"):
        onnx_embedder(broken)
    (broken / MODEL_FILE).unlink()
    with pytest.raises(ModelNotAvailableError, match=r"has no model\.onnx.*vitsearch export"):
        onnx_embedder(broken)


def test_checkpoint_unverified_or_newer_directory_is_refused(
    tiny_model: Path, fp32_export: Path, tmp_path: Path
) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"not a vitsearch export.*vitsearch export"):
        onnx_embedder(tiny_model)
    unverified = Path(shutil.copytree(fp32_export, tmp_path / "unverified"))
    manifest = json.loads((unverified / MANIFEST_FILE).read_text())
    (unverified / MANIFEST_FILE).write_text(json.dumps({**manifest, "verification": None}))
    with pytest.raises(ModelNotAvailableError, match="never verified"):
        onnx_embedder(unverified)
    newer = {**manifest, "format_version": 99, "a_field_from_the_future": 1}
    (unverified / MANIFEST_FILE).write_text(json.dumps(newer))
    with pytest.raises(ModelNotAvailableError, match="upgrade vitsearch"):
        onnx_embedder(unverified)


def test_tolerance_check_fails_on_another_model(
    reference, fp32_export: Path, tmp_path: Path
) -> None:
    other = torch_embedder(save_tiny_vit(tmp_path / "other", seed=1))
    reused = Path(shutil.copytree(fp32_export, tmp_path / "reused"))
    export_onnx(other, reused)  # replaces the earlier export; verified against `other`: passes
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging left behind
    manifest = json.loads((reused / MANIFEST_FILE).read_text())
    assert manifest["source_fingerprint"] == other.info.fingerprint != reference.info.fingerprint
    with pytest.raises(BackendMismatchError, match=r"over 40 probe images: min cosine -?\d\.\d+"):
        verify_export(reused, reference)
    assert verify_export(reused, other).passed


def test_export_refuses_what_it_cannot_do_well(reference, tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp32 on the cpu"):
        export_onnx(_bf16(tiny_model), tmp_path / "a")
    with pytest.raises(ConfigError, match="--quantize"):
        export_onnx(reference, tmp_path / "b", quantize="int4")
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="not empty"):
        export_onnx(reference, crowded)
    assert [p.name for p in crowded.iterdir()] == ["holiday.jpg"]


def test_onnx_backend_settings(fp32_export: Path) -> None:
    with pytest.raises(ConfigError, match="is fp32, not bf16"):
        onnx_embedder(fp32_export, precision="bf16")
    with pytest.raises(ConfigError, match="run on the CPU"):
        onnx_embedder(fp32_export, device="cuda")
    assert onnx_embedder(fp32_export, precision="fp32", device="cpu").precision == "fp32"


def _bf16(model: Path):
    return load_embedder(str(model), threads=1, precision="bf16")


def test_cli_export_then_index_and_search_with_the_onnx_backend(
    cli_env: dict, tmp_path: Path
) -> None:
    import json
    import subprocess

    from tests.helpers import draw_album

    photos = draw_album(tmp_path / "album", 4)
    out = tmp_path / "exported"

    def run(*args: str) -> subprocess.CompletedProcess:
        # an export fixes its backend and precision: no pin
        return vitsearch(
            *args, env={**cli_env, "VITSEARCH_BACKEND": "auto", "VITSEARCH_PRECISION": "auto"}
        )

    assert "min cosine" in run("export", "--out", str(out), "--quantize", "int8").stdout
    onnx = ("--backend", "onnx", "--model", str(out), "--home", str(tmp_path / "onnx-home"))
    run("index", str(tmp_path / "album"), *onnx)
    hits = json.loads(run("search", str(photos[1]), "--json", *onnx).stdout)
    assert hits[0]["path"] == str(photos[1])
    status = json.loads(run("status", "--json", *onnx).stdout)
    assert status["model_fingerprint"].endswith("+onnx-int8")
