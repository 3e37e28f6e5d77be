"""Exploring a library without a query: clusters, duplicates and the 2-D map."""
