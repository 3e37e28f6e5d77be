"""Checks that need real weights: they run when VITSEARCH_TEST_MODEL names a local checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import draw_photo
from vitsearch.config import load_settings
from vitsearch.model import load_embedder

REAL_MODEL = os.environ.get("VITSEARCH_TEST_MODEL")
pytestmark = [
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
    fp32 = load_embedder(load_settings(environ={}, model=REAL_MODEL, precision="fp32"))
    auto = load_embedder(load_settings(environ={}, model=REAL_MODEL))
    reference = fp32.embed_images(images)
    result = auto.embed_images(images)
    assert reference.vectors.shape[1] == fp32.info.dim
    assert all(len(labels) == 5 for labels in reference.labels)
    assert (reference.vectors * result.vectors).sum(axis=1).min() >= 0.999
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)
