"""Features from any layer, through the real loading path on the tiny ViT."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import PINNED_BACKEND, draw_album, once
from vitsearch.config import load_settings
from vitsearch.errors import ConfigError, ModelMismatchError
from vitsearch.model import Features, load_embedder

pytestmark = pytest.mark.slow


def reference_hidden_states(tiny_model: Path, pixels: np.ndarray):
    from transformers import ViTForImageClassification

    model = ViTForImageClassification.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        out = model.vit(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    return out.hidden_states, out.last_hidden_state


def unit(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t, dim=-1).numpy()


@pytest.mark.parametrize(
    ("layer", "pool"), [(1, "cls"), (1, "mean"), (0, "mean"), (-1, "mean"), (2, "cls+mean")]
)
def test_layer_and_pool_match_hidden_states(tiny_model: Path, tmp_path: Path, layer, pool) -> None:
    embedder = load_embedder(str(tiny_model), threads=1, features=Features(layer, pool))
    photos = draw_album(tmp_path, 3)
    from PIL import Image

    pixels = np.stack([embedder.preprocess(Image.open(p).convert("RGB")) for p in photos])
    hidden, last = reference_hidden_states(tiny_model, pixels)
    tokens = last if layer == -1 else hidden[layer]
    cls, mean = tokens[:, 0], tokens[:, 1:].mean(dim=1)
    expected = {
        "cls": unit(cls),
        "mean": unit(mean),
        "cls+mean": unit(
            torch.cat(
                [
                    torch.nn.functional.normalize(cls, dim=-1),
                    torch.nn.functional.normalize(mean, dim=-1),
                ],
                dim=-1,
            )
        ),
    }[pool]
    result = embedder.embed(pixels)
    assert result.vectors.shape == expected.shape
    assert np.allclose(result.vectors, expected, atol=1e-5)
    assert embedder.info.dim == expected.shape[1]
    assert all(len(labels) == 5 for labels in result.labels)  # the head still labels


def test_layer_out_of_range_refused(tiny_model: Path) -> None:
    with pytest.raises(ConfigError, match="--layer must be"):
        load_embedder(str(tiny_model), threads=1, features=Features(layer=7))


def test_embed_command_writes_vectors_and_paths(cli_env: dict, tmp_path: Path) -> None:
    photos = draw_album(tmp_path / "in", 4)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"nope")
    out = tmp_path / "out" / "features.npy"
    out.parent.mkdir()  # a missing folder is refused before the model loads (test_first_hour)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitsearch",
            "embed",
            str(tmp_path / "in"),
            "--out",
            str(out),
            "--layer",
            "1",
            "--pool",
            "cls+mean",
        ],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "skipping" in result.stderr and "broken.jpg" in result.stderr
    vectors = np.load(out)
    listed = out.with_suffix(".txt").read_text().split()
    assert vectors.shape == (4, 64) and listed == sorted(map(str, photos))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_library_on_other_features_refuses_mixing(
    home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    draw_album(tmp_path / "album", 3)
    mean_pool = load_settings(
        environ={}, home=home, model=str(tiny_model), pool="mean", threads=1, **PINNED_BACKEND
    )
    once(mean_pool, write=True).index([tmp_path / "album"])
    assert once(mean_pool).status().as_dict()["model_fingerprint"].endswith("|layer=-1|pool=mean")
    hits = once(mean_pool).search_image(tmp_path / "album" / "photo_0001.jpg", 1)
    assert hits[0].path.endswith("photo_0001.jpg")
    default = load_settings(
        environ={}, home=home, model=str(tiny_model), threads=1, **PINNED_BACKEND
    )
    with pytest.raises(ModelMismatchError):
        once(default).search_image(tmp_path / "album" / "photo_0001.jpg", 1)
