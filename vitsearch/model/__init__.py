"""The model engine: the only package that imports torch and transformers.

Its names are imported on first use (PEP 562), so that importing the torch-free
:mod:`vitsearch.model.checkpoint_check` does not pay seconds for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitsearch.model.embedder import Embedder, EmbeddingBatch
    from vitsearch.model.loader import load_embedder

_HOMES = {
    "Embedder": "vitsearch.model.embedder",
    "EmbeddingBatch": "vitsearch.model.embedder",
    "load_embedder": "vitsearch.model.loader",
}

__all__ = ["Embedder", "EmbeddingBatch", "load_embedder"]


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
