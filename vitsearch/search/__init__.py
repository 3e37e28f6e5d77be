"""Queries over a library: by image, by indexed image, classification."""

from vitsearch.search.query import classify, search_by_image, similar_to

__all__ = ["classify", "search_by_image", "similar_to"]
