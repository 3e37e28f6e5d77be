"""Checks that need real weights: they run when VITSEARCH_TEST_MODEL names a local checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import IMAGENET_SAMPLE, REAL_MODEL, draw_photo
from vitsearch.config import available_cores
from vitsearch.model import load_embedder
from vitsearch.model.choice.runtime import choose_runtime

pytestmark = [
    pytest.mark.slow,  # the real loading path, on real weights
    pytest.mark.real_model,
    pytest.mark.skipif(
        not REAL_MODEL,
        reason="no real weights here: set VITSEARCH_TEST_MODEL to a local checkpoint directory "
        "(e.g. a saved google/vit-base-patch16-224)",
    ),
]


def test_real_checkpoint_labels_and_precision(tmp_path: Path) -> None:
    images = [
        Image.open(draw_photo(tmp_path / f"{i}.png", seed=i, size=(320, 240), fmt="PNG")).convert(
            "RGB"
        )
        for i in range(8)
    ]
    fp32 = load_embedder(REAL_MODEL, threads=available_cores())
    torch = choose_runtime("torch", "auto", "auto")  # the device and precision auto picks
    auto = load_embedder(
        REAL_MODEL, threads=available_cores(), device=torch.device, precision=torch.precision
    )
    reference = fp32.embed_images(images)
    result = auto.embed_images(images)
    assert reference.vectors.shape[1] == fp32.info.dim
    assert all(len(labels) == 5 for labels in reference.labels)
    assert (reference.vectors * result.vectors).sum(axis=1).min() >= 0.999
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)


def real_photos(count: int) -> list[Image.Image]:
    """Real photos when the shared sample is here, else the export check's own probes."""
    from vitsearch.model.pytorch.exporter import probe_images

    files = sorted(IMAGENET_SAMPLE.glob("*.JPEG"))[:: max(1, 1000 // count)][:count]
    if not files:
        return probe_images()
    return [Image.open(f).convert("RGB") for f in files]


def test_int8_export_keeps_the_neighbours_of_trained_weights(tmp_path: Path) -> None:
    """Per-tensor dynamic int8 kept 0.68 of the top-10 neighbours here; the shipped block
    int8 must keep >= 0.95 on real photos, and pass its own check."""
    from vitsearch.model.exported.loader import open_export
    from vitsearch.model.pytorch.exporter import export_onnx, neighbour_overlap

    fp32 = load_embedder(REAL_MODEL, threads=available_cores())
    manifest = export_onnx(fp32, tmp_path / "int8", quantize="int8")
    assert manifest.verification["passed"]
    int8 = open_export(tmp_path / "int8", threads=2)
    images = real_photos(200)
    expected, got = fp32.embed_images(images).vectors, int8.embed_images(images).vectors
    assert neighbour_overlap(expected, got) >= 0.95
    assert (expected * got).sum(axis=1).min() >= 0.99
