"""Nearest-emotion search: FAISS indexes over a store's feature sets."""

from emostore.search.index import NearestIndex, StaleIndex, list_indexes
from emostore.search.query import neighbours

__all__ = ["NearestIndex", "StaleIndex", "list_indexes", "neighbours"]
