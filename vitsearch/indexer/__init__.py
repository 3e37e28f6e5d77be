"""Scan, diff against the store, decode, batch, embed, write."""

from vitsearch.indexer.reconcile import Indexer, Summary

__all__ = ["Indexer", "Summary"]
