"""The model engine through the same loading path a real checkpoint takes, on the tiny ViT."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TINY_LABELS, draw_photo, save_tiny_vit
from vitsearch.errors import ModelNotAvailableError
from vitsearch.machine.hardware import choose_precision, cpu_flags, has_bf16_hardware
from vitsearch.model import load_embedder

pytestmark = pytest.mark.slow


def photos(tmp_path: Path, count: int = 6) -> list[Image.Image]:
    return [
        Image.open(draw_photo(tmp_path / f"p{i}.png", seed=i, fmt="PNG")).convert("RGB")
        for i in range(count)
    ]


def embedder_for(model: Path | str, **flags):
    return load_embedder(str(model), threads=1, **flags)


def test_one_pass_gives_unit_embeddings_and_top5_labels(tiny_model: Path, tmp_path: Path) -> None:
    embedder = embedder_for(tiny_model, precision="fp32")
    result = embedder.embed_images(photos(tmp_path))
    assert result.vectors.shape == (6, 32) and result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    for labels in result.labels:
        assert len(labels) == 5
        assert {label.label for label in labels} <= set(TINY_LABELS.values())
        scores = [label.score for label in labels]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6


def test_embedding_is_the_cls_token_the_head_reads(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import ViTForImageClassification

    embedder = embedder_for(tiny_model, precision="fp32")
    images = photos(tmp_path, 2)
    pixels = np.stack([embedder.preprocess(image) for image in images])
    reference = ViTForImageClassification.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        out = reference(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
        cls = reference.vit.layernorm(out.hidden_states[-1])[:, 0]
    expected = torch.nn.functional.normalize(cls, dim=-1).numpy()
    result = embedder.embed(pixels)
    assert np.allclose(result.vectors, expected, atol=1e-5)
    top = out.logits.softmax(-1).argmax(-1).tolist()
    assert [labels[0].label for labels in result.labels] == [TINY_LABELS[i] for i in top]


@pytest.mark.parametrize("precision", ["bf16"])
def test_low_precision_stays_close_to_fp32(
    tiny_model: Path, tmp_path: Path, precision: str
) -> None:
    images = photos(tmp_path)
    reference = embedder_for(tiny_model, precision="fp32").embed_images(images).vectors
    low = embedder_for(tiny_model, precision=precision).embed_images(images).vectors
    assert (reference * low).sum(axis=1).min() >= 0.999


def test_checkpoint_without_head_embeds_without_labels(tmp_path: Path) -> None:
    directory = save_tiny_vit(tmp_path / "headless", with_head=False)
    embedder = embedder_for(directory)
    result = embedder.embed_images(photos(tmp_path, 2))
    assert not embedder.has_labels
    assert result.vectors.shape == (2, 32) and result.labels == [(), ()]


def test_fingerprint_follows_content_not_location(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    copy = shutil.copytree(tiny_model, tmp_path / "moved-model")
    assert embedder_for(copy).info.fingerprint == embedder_for(tiny_model).info.fingerprint
    other = save_tiny_vit(tmp_path / "other", seed=1)
    assert embedder_for(other).info.fingerprint != embedder_for(tiny_model).info.fingerprint


def test_pickle_only_checkpoint_refused(tiny_model: Path, tmp_path: Path) -> None:
    import shutil

    pickled = shutil.copytree(tiny_model, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelNotAvailableError, match="pickle"):
        embedder_for(pickled)


def test_missing_directory_and_uncached_hub_model_fail_fast(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match="no model checkpoint directory"):
        embedder_for(tmp_path / "nope")
    started = time.monotonic()
    with pytest.raises(ModelNotAvailableError, match=r"not cached.*--model DIR"):
        embedder_for("google/vit-base-patch16-224")
    assert time.monotonic() - started < 10


def test_auto_precision_follows_cpu_flags() -> None:
    assert choose_precision("auto", "cpu", frozenset({"avx2", "amx_bf16"})) == "bf16"
    assert choose_precision("auto", "cpu", frozenset({"avx512f", "avx512_bf16"})) == "bf16"
    assert choose_precision("auto", "cpu", frozenset({"avx2", "fma"})) == "fp32"
    assert choose_precision("auto", "cuda", frozenset()) == "fp16"
    assert choose_precision("fp32", "cpu", frozenset({"amx_bf16"})) == "fp32"


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_bf16\n")
    flags = cpu_flags(cpuinfo)
    assert flags == frozenset({"fpu", "avx2", "avx512_bf16"}) and has_bf16_hardware(flags)
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_damaged_weights_are_a_clear_error(tiny_model: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for part in tiny_model.iterdir():
        (damaged / part.name).write_bytes(part.read_bytes())
    (damaged / "model.safetensors").write_bytes(b"cut short" * 10)  # a download cut short
    with pytest.raises(ModelNotAvailableError, match="cannot load checkpoint"):
        embedder_for(damaged, precision="fp32")
