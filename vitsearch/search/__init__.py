"""Queries over a library by image: a photo file, its bytes, or an indexed photo, and the
model's labels for a file (by label: :mod:`vitsearch.labels.search`)."""

from vitsearch.search.query import classify, search_by_image, similar_to

__all__ = ["classify", "search_by_image", "similar_to"]
