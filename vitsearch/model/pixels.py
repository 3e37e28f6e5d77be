"""Photo -> model pixels: the checkpoint's image processor, with a quicker path for the
plain resize-rescale-normalise that ViT processors do.

The processor's per-call overhead (validation, format inference, several array passes) is
about half of preprocessing time, and preprocessing runs on the same two cores as the
forward, so the plain case is done here in one resize and one fused multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

# Steps the quick path reproduces; a processor switching on any other do_* step (a centre
# crop, padding, ...) keeps going through the processor itself.
PLAIN_STEPS = frozenset({"do_resize", "do_rescale", "do_normalize", "do_convert_rgb"})


@dataclass(frozen=True)
class PlainPixels:
    """Resize to ``size`` (width, height), then ``pixel * scale + shift`` per channel."""

    size: tuple[int, int]
    resample: int
    scale: np.ndarray  # (3,) float32: rescale_factor / std
    shift: np.ndarray  # (3,) float32: -mean / std

    def __call__(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> (3, H, W) float32."""
        resized = image.resize(self.size, self.resample)
        pixels = np.asarray(resized, dtype=np.float32) * self.scale + self.shift
        return pixels.transpose(2, 0, 1)


def input_size(size: dict | None) -> tuple[int, int]:
    """(width, height) a processor's ``size`` setting resizes to (224 where it names none)."""
    size = size or {}
    height = size.get("height") or size.get("shortest_edge") or 224
    width = size.get("width") or size.get("shortest_edge") or 224
    return int(width), int(height)


def plain_pixels(processor) -> PlainPixels | None:
    """The quick path equivalent to ``processor``, or None when it does more than that."""
    settings = processor.to_dict()
    steps = {key for key, value in settings.items() if key.startswith("do_") and value}
    size = settings.get("size") or {}
    if (
        not type(processor).__name__.endswith("Pil")
        or not steps <= PLAIN_STEPS
        or "do_resize" not in steps
        or set(size) != {"height", "width"}
    ):
        return None
    rescale = settings.get("rescale_factor", 1.0) if "do_rescale" in steps else 1.0
    mean, std = np.zeros(3), np.ones(3)
    if "do_normalize" in steps:
        mean = np.broadcast_to(np.asarray(settings["image_mean"], np.float64), 3)
        std = np.broadcast_to(np.asarray(settings["image_std"], np.float64), 3)
    return PlainPixels(
        size=(int(size["width"]), int(size["height"])),
        resample=int(settings.get("resample", Image.Resampling.BILINEAR)),
        scale=(rescale / std).astype(np.float32),
        shift=(-mean / std).astype(np.float32),
    )
