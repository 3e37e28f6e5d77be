"""The model engine: the only package that imports torch and transformers."""

from vitsearch.model.embedder import Embedder, EmbeddingBatch
from vitsearch.model.loader import load_embedder

__all__ = ["Embedder", "EmbeddingBatch", "load_embedder"]
