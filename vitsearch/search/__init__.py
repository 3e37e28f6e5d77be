"""Queries over a library: by image, by indexed image, by label; clusters and duplicates."""

from vitsearch.search.labels import label_counts, search_by_label
from vitsearch.search.query import classify, search_by_image, similar_to

__all__ = ["classify", "label_counts", "search_by_image", "search_by_label", "similar_to"]
