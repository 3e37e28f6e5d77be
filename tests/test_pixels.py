"""The quick preprocessing path gives the image processor's pixels, or steps aside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import DeiTImageProcessorPil, ViTImageProcessorPil

from tests.helpers import draw_photo
from vitsearch.model import load_embedder
from vitsearch.model.pixels import plain_pixels, plain_pixels_from_config
from vitsearch.photos.decode import read_photo

# transformers' processors are the reference: importing them takes torch (seconds), so the
# fast tier leaves this module out
pytestmark = pytest.mark.slow

PROCESSORS = {
    "vit defaults (imagenet mean/std)": ViTImageProcessorPil(),
    "vit-base hub config": ViTImageProcessorPil(
        size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ),
    "bicubic, no normalise": ViTImageProcessorPil(
        size={"height": 64, "width": 48}, resample=Image.Resampling.BICUBIC, do_normalize=False
    ),
}


def photos(tmp_path: Path) -> list[Image.Image]:
    sizes = [(224, 224), (640, 480), (97, 301), (20, 15)]
    modes = ["RGB", "RGBA", "L", "P"]
    found = []
    for seed, (size, mode) in enumerate(zip(sizes, modes, strict=True)):
        path = draw_photo(tmp_path / f"p{seed}.png", seed, size=size, mode=mode)
        found.append(read_photo(str(path), (448, 448)).image)
    return found


def assert_gives_the_processors_pixels(plain, processor, tmp_path: Path) -> None:
    assert plain is not None
    for image in photos(tmp_path):
        expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
        got = plain(image)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", PROCESSORS)
def test_plain_path_matches_the_processor(name: str, tmp_path: Path) -> None:
    processor = PROCESSORS[name]
    assert_gives_the_processors_pixels(plain_pixels(processor), processor, tmp_path)


@pytest.mark.parametrize("name", PROCESSORS)
def test_the_saved_config_gives_the_processors_pixels(name: str, tmp_path: Path) -> None:
    """What an export runs without importing transformers: the quick path read from the
    preprocessor_config.json saved beside it."""
    processor = PROCESSORS[name]
    processor.save_pretrained(tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())
    assert_gives_the_processors_pixels(plain_pixels_from_config(config), processor, tmp_path)


def test_a_config_that_leaves_settings_to_transformers_keeps_the_processor(tmp_path: Path) -> None:
    DeiTImageProcessorPil().save_pretrained(tmp_path / "deit")  # resize, then centre crop
    deit = json.loads((tmp_path / "deit" / "preprocessor_config.json").read_text())
    assert plain_pixels_from_config(deit) is None
    # google/vit-base-patch16-224's own config: a bare size and the rescale left to defaults
    hub = {
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "ViTImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "size": 224,
    }
    assert plain_pixels_from_config(hub) is None
    full = {**hub, "size": {"height": 224, "width": 224}, "do_rescale": True}
    assert plain_pixels_from_config({**full, "rescale_factor": 1 / 255}) is not None
    assert plain_pixels_from_config({**full, "rescale_factor": 1 / 255, "do_pad": True}) is None
    assert plain_pixels_from_config(full) is None


def test_processors_doing_more_keep_their_own_path() -> None:
    assert plain_pixels(DeiTImageProcessorPil()) is None  # resize, then centre crop
    shortest_edge = ViTImageProcessorPil(size={"shortest_edge": 224})
    assert plain_pixels(shortest_edge) is None


def test_embedder_preprocess_is_the_checkpoint_processor(settings, tmp_path: Path) -> None:
    embedder = load_embedder(settings.model, threads=settings.threads)  # cpu fp32, as pinned
    assert embedder._plain is not None, "the tiny ViT's processor should take the quick path"
    for image in photos(tmp_path):
        expected = embedder._processor(images=[image], return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(embedder.preprocess(image), expected, atol=1e-5)
