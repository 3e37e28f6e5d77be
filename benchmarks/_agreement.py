"""How closely another backend's embeddings agree with torch fp32's on the same photos: top-10
neighbour overlap, cosines and top-1 labels (imports the exporter, and so torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from vitsearch.model.features import EmbeddingBatch
from vitsearch.model.pytorch.exporter import neighbour_overlap

if TYPE_CHECKING:
    from vitsearch.model.pytorch.embedder import Embedder


@dataclass(frozen=True)
class Agreement:
    overlap: float  # top-10 neighbours among the photos kept
    min_cosine: float
    mean_cosine: float
    top1: float | None  # share of photos with the same top label; None without labels


def load_pixels(embedder: Embedder, photos: Sequence[Path]) -> np.ndarray:
    """The photos through the checkpoint's own processor, as every backend will see them."""
    return np.stack([embedder.preprocess(Image.open(p).convert("RGB")) for p in photos])


def embed_batches(embedder, pixels: np.ndarray, batch_size: int) -> EmbeddingBatch:
    batches = [
        embedder.embed(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)
    ]
    return EmbeddingBatch(
        vectors=np.concatenate([b.vectors for b in batches]),
        labels=[labels for b in batches for labels in b.labels],
    )


def top1_agreement(expected: Sequence[tuple], got: Sequence[tuple]) -> float | None:
    """Share of photos whose top label is the same; None when either side has no labels."""
    if not expected or not all(expected) or not all(got):
        return None
    same = [a[0].label == b[0].label for a, b in zip(expected, got, strict=True)]
    return float(np.mean(same))


def agreement(expected: EmbeddingBatch, got: EmbeddingBatch) -> Agreement:
    cosines = np.sum(expected.vectors * got.vectors, axis=1)
    return Agreement(
        overlap=neighbour_overlap(expected.vectors, got.vectors),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        top1=top1_agreement(expected.labels, got.labels),
    )
