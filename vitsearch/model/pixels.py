"""Photo -> model pixels: the checkpoint's image processor, with a quicker path for the
plain resize-rescale-normalise that ViT processors do.

The processor's per-call overhead (validation, format inference, several array passes) is
about half of preprocessing time, and preprocessing runs on the same two cores as the
forward, so the plain case is done here in one resize and one fused multiply-add.

An export runs without transformers: its quick path is read from the
``preprocessor_config.json`` saved beside it (:func:`plain_pixels_from_config`), and only a
processor that does more than that is loaded through transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from vitsearch.model.features import EmbeddingBatch
    from vitsearch.records import ModelInfo

# Steps the quick path reproduces; a processor switching on any other do_* step (a centre
# crop, padding, ...) keeps going through the processor itself.
PLAIN_STEPS = frozenset({"do_resize", "do_rescale", "do_normalize", "do_convert_rgb"})
# Processors (by their saved ``image_processor_type``, backend suffix dropped) whose PIL
# version does no more than the steps their do_* settings name.
PLAIN_PROCESSORS = frozenset({"ViTImageProcessor"})
# What the quick path reads; a saved config lacking one leaves it to the class's defaults
# (a hub config's bare ``"size": 224``, say), so it goes through the processor.
CONFIG_KEYS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
)


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
    if not type(processor).__name__.endswith("Pil"):
        return None
    return _plain_settings(processor.to_dict())


def plain_pixels_from_config(config: dict) -> PlainPixels | None:
    """The quick path equivalent to the PIL processor a saved ``preprocessor_config.json``
    (parsed) makes, read without transformers; None when that processor may do more, or
    when the config leaves a setting the quick path reads to the processor's defaults."""
    kind = str(config.get("image_processor_type", ""))
    kind = kind.removesuffix("Pil").removesuffix("Fast")
    if kind not in PLAIN_PROCESSORS or not all(key in config for key in CONFIG_KEYS):
        return None
    return _plain_settings(config)


def _plain_settings(settings: dict) -> PlainPixels | None:
    """The quick path for a processor's settings, or None when they switch on more steps."""
    steps = {key for key, value in settings.items() if key.startswith("do_") and value}
    size = settings.get("size") or {}
    if (
        not steps <= PLAIN_STEPS
        or "do_resize" not in steps
        or not isinstance(size, dict)
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


class PixelInput:
    """Preprocessing shared by every backend: needs ``self.info`` and ``self._processor``
    (an image processor, or the :class:`PlainPixels` an export's config gives)."""

    info: ModelInfo
    _processor: Any  # an image processor, or PlainPixels

    if TYPE_CHECKING:  # given by each backend

        def embed(self, pixels: np.ndarray) -> EmbeddingBatch: ...

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the processor resizes to; decoders may draft down to it."""
        return input_size(self.info.preprocessing.get("size"))

    @property
    def decode_size(self) -> tuple[int, int]:
        """Decoders may reduce a photo to this before preprocessing. A JPEG draft keeps at
        least this size, and its DCT scaling averages pixels as a good downscale does: on
        12 MP photos it decodes in 13 ms instead of 18 at twice the size, and the model's
        pixels differ from a full decode by 0.4 grey levels on average."""
        return self.input_size

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> (3, H, W) float32 pixels, exactly as the checkpoint expects."""
        if self._plain is not None:
            return self._plain(image)
        return self._processor(images=[image], return_tensors="np")["pixel_values"][0]

    @cached_property
    def _plain(self) -> PlainPixels | None:
        if isinstance(self._processor, PlainPixels):
            return self._processor
        return plain_pixels(self._processor)

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        return self.embed(np.stack([self.preprocess(image) for image in images]))
