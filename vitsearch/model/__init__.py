"""The model engine: the only package that imports torch and transformers."""

from vitsearch.model.embedder import EmbeddingBatch, Embedder
from vitsearch.model.loader import load_embedder

__all__ = ["EmbeddingBatch", "Embedder", "load_embedder"]
