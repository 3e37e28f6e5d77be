"""Batched forward: one pass gives the L2-normalised CLS embedding and the top labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from vitsearch.model.hardware import DTYPES
from vitsearch.model.pixels import PlainPixels, input_size, plain_pixels
from vitsearch.records import Label, ModelInfo

TOP_LABELS = 5


FINAL_LAYER = -1


@dataclass(frozen=True)
class Features:
    """Which vector stands for a photo.

    ``layer``: -1 (default) is the encoder's final output after its layer norm, the CLS token
    the classifier reads; 0..N is ``hidden_states[layer]`` (0: the patch embeddings, N: the last
    layer before the final norm). ``pool``: the CLS token, the mean of the patch tokens, or both
    concatenated (twice the dimension).
    """

    layer: int = FINAL_LAYER
    pool: str = "cls"

    @property
    def default(self) -> bool:
        return self.layer == FINAL_LAYER and self.pool == "cls"

    def tag(self) -> str:
        """Appended to a model fingerprint, so libraries on other features are kept apart."""
        return "" if self.default else f"|layer={self.layer}|pool={self.pool}"


DEFAULT_FEATURES = Features()  # the final CLS token (for default arguments)


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: np.ndarray  # (n, dim) float32, unit length
    labels: list[tuple[Label, ...]]  # top labels per image; empty without a head


class PixelInput:
    """Preprocessing shared by every backend: needs ``self.info`` and ``self._processor``."""

    info: ModelInfo

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
        return plain_pixels(self._processor)

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        return self.embed(np.stack([self.preprocess(image) for image in images]))


class Embedder(PixelInput):
    """A loaded ViT checkpoint ready to embed batches of preprocessed pixels.

    ``preprocess`` is safe to call from decode threads; ``embed`` runs the model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor,
        info: ModelInfo,
        device: str,
        precision: str,
        features: Features = Features(),
    ) -> None:
        self.info = info
        self.device = device
        self.precision = precision
        self.features = features
        self._dtype = DTYPES[precision]
        self._processor = processor
        self._model = model.to(device=device, dtype=self._dtype).eval()
        self._head = getattr(model, "classifier", None)
        self._backbone = model.base_model if self._head is not None else model
        self._id2label = model.config.id2label if self._head is not None else {}

    @property
    def has_labels(self) -> bool:
        return self._head is not None

    def set_threads(self, threads: int) -> None:
        """Torch intra-op threads from the next forward on (process-wide, as torch has it)."""
        torch.set_num_threads(threads)

    def embed(self, pixels: np.ndarray) -> EmbeddingBatch:
        """(n, 3, H, W) pixels -> unit embeddings and top labels, in one forward pass."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self._dtype)
        final = self.features.layer == FINAL_LAYER
        with torch.inference_mode():
            out = self._backbone(pixel_values=batch, output_hidden_states=not final)
            cls = out.last_hidden_state[:, 0]
            labels = self._top_labels(self._head(cls)) if self._head is not None else None
            tokens = out.last_hidden_state if final else out.hidden_states[self.features.layer]
            pooled = _pool(tokens.float(), self.features.pool)
        vectors = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return EmbeddingBatch(vectors=vectors, labels=labels or [() for _ in range(len(vectors))])

    def _top_labels(self, logits: torch.Tensor) -> list[tuple[Label, ...]]:
        probs = torch.softmax(logits.float(), dim=-1)
        scores, indices = probs.topk(min(TOP_LABELS, probs.shape[-1]), dim=-1)
        return [
            tuple(
                Label(self._id2label.get(int(i), str(int(i))), float(s))
                for s, i in zip(row_scores, row_indices, strict=True)
            )
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True)
        ]


def _pool(tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """(n, 1 + patches, dim) tokens -> (n, dim) or (n, 2 dim) for cls+mean."""
    cls, patches = tokens[:, 0], tokens[:, 1:].mean(dim=1)
    if pool == "cls":
        return cls
    if pool == "mean":
        return patches
    # each half normalised first, so neither dominates the concatenation
    halves = [torch.nn.functional.normalize(part, dim=-1) for part in (cls, patches)]
    return torch.cat(halves, dim=-1)
