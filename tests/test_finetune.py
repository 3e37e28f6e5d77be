"""Fine-tuning the tiny ViT on drawn colour classes, through the real loading and saving path."""

from __future__ import annotations

import itertools
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.helpers import PINNED_BACKEND, once, save_tiny_vit
from vitsearch.config import PRECISIONS, load_settings
from vitsearch.errors import ConfigError, VitsearchError
from vitsearch.model import load_embedder
from vitsearch.model.pytorch import finetune as finetuning
from vitsearch.model.pytorch.finetune import (
    STATE_FILE,
    FinetuneDataError,
    FinetuneOptions,
    finetune,
    lr_factor,
)

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
CHANCE = 1 / len(COLOURS)
# A high rate: the classes are trivial and the test must learn them in a few dozen steps.
FAST = FinetuneOptions(
    epochs=4, batch_size=4, grad_accum=2, lr=1e-2, freeze_layers=1, val_fraction=0.25, seed=3
)


def colour_photo(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    """A solid colour with a little seeded noise, so no two photos are the same."""
    noise = np.random.default_rng(seed).normal(0, 12, (40, 48, 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def colour_classes(root: Path, per_class: int = 8, colours: dict = COLOURS) -> Path:
    for c, (name, colour) in enumerate(colours.items()):
        for i in range(per_class):
            colour_photo(root / name / f"{name}_{i}.png", colour, seed=100 * c + i)
    return root


def run(tiny_model: Path, data: Path, out: Path, **changes):
    options = FinetuneOptions(**{**FAST.__dict__, **changes})
    return finetune(str(tiny_model), data, out, options, threads=1, progress=True)


def test_finetune_lowers_the_loss_and_learns_the_classes(tiny_model: Path, tmp_path: Path) -> None:
    result = run(tiny_model, colour_classes(tmp_path / "data"), tmp_path / "out")
    assert result.classes == ("blue", "green", "red")
    assert (result.train_size, result.val_size) == (18, 6)
    assert [stats.epoch for stats in result.history] == [1, 2, 3, 4]
    assert result.history[-1].train_loss < 0.5 * result.history[0].train_loss
    assert result.history[-1].val_loss < result.history[0].val_loss
    assert result.best.val_accuracy >= CHANCE + 0.5
    assert result.resumed_from == 0 and not result.stopped_early


def test_early_stop_after_patience_epochs_keeps_the_best(tiny_model: Path, tmp_path: Path) -> None:
    # A rate far too high for the model: validation gets worse and the run stops.
    data = colour_classes(tmp_path / "data")
    result = run(tiny_model, data, tmp_path / "out", lr=1.0, patience=1, epochs=8, precision="fp32")
    assert result.stopped_early
    assert len(result.history) == result.best_epoch + 1
    best = max(result.history, key=lambda s: (s.val_accuracy, -s.val_loss))
    assert result.best == best


def test_output_is_a_checkpoint_transformers_and_index_load(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    data = colour_classes(tmp_path / "data")
    out = run(tiny_model, data, tmp_path / "out", precision="fp32").out_dir
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    red = Image.open(colour_photo(tmp_path / "red.png", COLOURS["red"], seed=999))
    pixels = AutoImageProcessor.from_pretrained(out)(images=[red], return_tensors="pt")
    with torch.no_grad():
        assert model(**pixels).logits.argmax(-1).item() == 2

    embedder = load_embedder(str(out), threads=1)
    assert embedder.embed_images([red.convert("RGB")]).labels[0][0].label == "red"
    settings = load_settings(
        environ={}, home=tmp_path / "home", model=str(out), threads=1, **PINNED_BACKEND
    )
    summary = once(settings, write=True).index([data])
    assert (summary.new, summary.failed) == (24, 0)


def test_a_checkpoint_without_a_head_gets_one(tmp_path: Path) -> None:
    headless = save_tiny_vit(tmp_path / "headless", with_head=False)
    result = run(headless, colour_classes(tmp_path / "data"), tmp_path / "out", epochs=2)
    embedder = load_embedder(str(result.out_dir), threads=1)
    assert embedder.has_labels and result.best.val_accuracy >= CHANCE + 0.5


def layer_of(name: str) -> int | None:
    """The encoder block a weight belongs to (``encoder.layer.N`` or ``layers.N``)."""
    match = re.search(r"\.layers?\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def test_frozen_layers_stay_unchanged_and_the_last_ones_train(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = run(tiny_model, colour_classes(tmp_path / "data"), tmp_path / "out", epochs=2).out_dir
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert after["classifier.weight"].shape == (3, 32)
    shared = [name for name in before if not name.startswith("classifier.")]
    assert set(shared) <= set(after)
    frozen = [n for n in shared if layer_of(n) == 0 or "embeddings" in n]
    trained = [n for n in shared if layer_of(n) == 1]
    assert frozen and trained
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in trained)


def test_resume_continues_from_the_next_epoch(tiny_model: Path, tmp_path: Path) -> None:
    data, out = colour_classes(tmp_path / "data"), tmp_path / "out"
    first = run(tiny_model, data, out, epochs=1)
    assert [s.epoch for s in first.history] == [1] and (out / STATE_FILE).is_file()
    resumed = run(tiny_model, data, out, epochs=3)
    assert resumed.resumed_from == 1
    assert [s.epoch for s in resumed.history] == [1, 2, 3]
    assert "resumed after epoch 1" in resumed.line() and str(out) in resumed.line()
    assert resumed.history[0] == first.history[0]
    with pytest.raises(VitsearchError, match=r"other data, base model or options.*delete it"):
        run(tiny_model, data, out, epochs=4, lr=5e-3)


def test_one_class_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    data = colour_classes(tmp_path / "data", colours={"red": COLOURS["red"]})
    with pytest.raises(FinetuneDataError, match=r"at least 2 classes.*found 1 \(red\)"):
        run(tiny_model, data, tmp_path / "out")


def test_empty_class_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    data = colour_classes(tmp_path / "data")
    (data / "empty").mkdir()
    with pytest.raises(FinetuneDataError, match=r"'empty'.* 0 readable"):
        run(tiny_model, data, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unreadable_photos_are_skipped_and_logged(
    tiny_model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = colour_classes(tmp_path / "data")
    broken = data / "red" / "broken.jpg"
    broken.write_bytes(b"not a photo")
    with caplog.at_level(logging.WARNING, logger="vitsearch"):
        result = run(tiny_model, data, tmp_path / "out", epochs=1)
    assert f"skipping {broken}: not an image" in caplog.text
    assert result.train_size + result.val_size == 24


def test_bad_options_and_too_many_layers_are_config_errors(
    tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="epochs"):
        FinetuneOptions(epochs=0)
    assert finetuning.PRECISIONS == PRECISIONS  # model/ does not import the settings
    with pytest.raises(ConfigError, match="val-fraction"):
        FinetuneOptions(val_fraction=1.0)
    with pytest.raises(ConfigError, match="only 2 encoder layers"):
        run(tiny_model, colour_classes(tmp_path / "data"), tmp_path / "out", freeze_layers=3)


def test_learning_rate_warms_up_then_follows_a_cosine() -> None:
    rates = [lr_factor(step, warmup=10, total=100) for step in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a < b for a, b in itertools.pairwise(rates[:10]))
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[55] == pytest.approx(0.5) and rates[-1] < 0.01
