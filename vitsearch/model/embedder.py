"""Batched forward: one pass gives the L2-normalised CLS embedding and the top labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vitsearch.model.hardware import DTYPES
from vitsearch.records import Label, ModelInfo

TOP_LABELS = 5


@dataclass(frozen=True)
class EmbeddingBatch:
    vectors: np.ndarray  # (n, dim) float32, unit length
    labels: list[tuple[Label, ...]]  # top labels per image; empty without a head


class Embedder:
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
    ) -> None:
        self.info = info
        self.device = device
        self.precision = precision
        self._dtype = DTYPES[precision]
        self._processor = processor
        self._model = model.to(device=device, dtype=self._dtype).eval()
        self._head = getattr(model, "classifier", None)
        self._backbone = model.base_model if self._head is not None else model
        self._id2label = model.config.id2label if self._head is not None else {}

    @property
    def has_labels(self) -> bool:
        return self._head is not None

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) the processor resizes to; decoders may draft down to it."""
        size = self.info.preprocessing.get("size") or {}
        height = size.get("height") or size.get("shortest_edge") or 224
        width = size.get("width") or size.get("shortest_edge") or 224
        return int(width), int(height)

    @property
    def decode_size(self) -> tuple[int, int]:
        """Decoders may reduce a photo to this before preprocessing, losing nothing visible."""
        width, height = self.input_size
        return 2 * width, 2 * height

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> (3, H, W) float32 pixels, exactly as the checkpoint expects."""
        return self._processor(images=[image], return_tensors="np")["pixel_values"][0]

    def embed(self, pixels: np.ndarray) -> EmbeddingBatch:
        """(n, 3, H, W) pixels -> unit embeddings and top labels, in one forward pass."""
        batch = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device, self._dtype)
        with torch.inference_mode():
            cls = self._backbone(pixel_values=batch).last_hidden_state[:, 0]
            labels = self._top_labels(self._head(cls)) if self._head is not None else None
        vectors = torch.nn.functional.normalize(cls.float(), dim=-1).cpu().numpy()
        return EmbeddingBatch(vectors=vectors, labels=labels or [() for _ in range(len(vectors))])

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch:
        return self.embed(np.stack([self.preprocess(image) for image in images]))

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
