"""Batched forward: one pass gives the L2-normalised CLS embedding and the top labels."""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch

# Features, EmbeddingBatch and PixelInput live in torch-free modules (exports run without torch)
from vitsearch.model.features import (
    DEFAULT_FEATURES,
    FINAL_LAYER,
    TOP_LABELS,
    EmbeddingBatch,
    Features,
)
from vitsearch.model.pixels import PixelInput
from vitsearch.records import Label, ModelInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        features: Features = DEFAULT_FEATURES,
    ) -> None:
        self.info = info
        self.device = device
        self.precision = precision
        self.features = features
        self._dtype = DTYPES[precision]
        self._processor = processor
        self._model = model.to(device=device, dtype=self._dtype).eval()
        # a transformers model: nn.Module's type knows neither its config nor its base_model
        loaded = cast(Any, model)
        self._head: torch.nn.Module | None = getattr(model, "classifier", None)
        self._backbone: torch.nn.Module = loaded.base_model if self._head is not None else model
        self._id2label: dict[int, str] = loaded.config.id2label if self._head is not None else {}

    @property
    def has_labels(self) -> bool:
        return self._head is not None

    def set_threads(self, threads: int) -> bool:
        """Torch intra-op threads from the next forward on (process-wide, as torch has it)."""
        torch.set_num_threads(threads)
        return True

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
