"""The model engine: the only package that imports torch and transformers.

Sub-packages by role: :mod:`.pytorch` runs and trains the model in torch (and makes exports),
:mod:`.exported` runs an export without torch, :mod:`.choice` decides which of them runs. The
modules at this level are the torch-free pieces they share (the :class:`.features.ImageEmbedder`
protocol, the checkpoint, pixels, scores, feature files, an export's request).

Its names are imported on first use (PEP 562), so that importing the torch-free
:mod:`vitsearch.model.checkpoint` does not pay seconds for torch, nor ``load_model`` on a
library that runs an ONNX or OpenVINO export (see :mod:`.choice.runtime`). Nothing here reads
:class:`vitsearch.config.Settings`: callers pass the checkpoint, backend, precision, device,
features and threads (``vitsearch.app`` turns settings into them).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitsearch.model.choice.runtime import load_model
    from vitsearch.model.features import EmbeddingBatch, Features
    from vitsearch.model.pytorch.embedder import Embedder
    from vitsearch.model.pytorch.loader import load_embedder

_HOMES = {
    "Embedder": "vitsearch.model.pytorch.embedder",
    "EmbeddingBatch": "vitsearch.model.features",
    "Features": "vitsearch.model.features",
    "load_embedder": "vitsearch.model.pytorch.loader",
    "load_model": "vitsearch.model.choice.runtime",
}

__all__ = ["Embedder", "EmbeddingBatch", "Features", "load_embedder", "load_model"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
