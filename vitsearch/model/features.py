"""What an embedder gives, torch-free: which vector stands for a photo (:class:`Features`)
and a batch of them with their top labels, shared by the PyTorch :class:`.pytorch.embedder.Embedder`
and the exported graphs (:mod:`.exported`), which run without torch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from vitsearch.records import Label, ModelInfo

if TYPE_CHECKING:
    from PIL import Image

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


class ImageEmbedder(Protocol):
    """What the indexer and search call on a model, whatever runs it: the PyTorch
    :class:`.pytorch.embedder.Embedder`, an :class:`.exported.manifest.ExportedEmbedder`, or a
    test's fake."""

    info: ModelInfo
    precision: str
    device: str

    @property
    def decode_size(self) -> tuple[int, int]:
        """Decoders may reduce a photo to this (width, height) before :meth:`preprocess`."""
        ...

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """An RGB image -> (3, H, W) float32 pixels; safe to call from decode threads."""
        ...

    def embed(self, pixels: np.ndarray) -> EmbeddingBatch:
        """(n, 3, H, W) pixels -> unit embeddings and top labels."""
        ...

    def embed_images(self, images: Sequence[Image.Image]) -> EmbeddingBatch: ...

    def set_threads(self, threads: int) -> bool:
        """Run the next forwards on this many intra-op threads; False where the runtime fixed
        them when it loaded (an ONNX Runtime or OpenVINO session)."""
        ...
