"""Nearest-emotion search: FAISS indexes over a store's feature sets."""

from emostore.search.index import NearestIndex, StaleIndex, index_dir, list_indexes
from emostore.search.query import neighbours

__all__ = ["NearestIndex", "StaleIndex", "index_dir", "list_indexes", "neighbours"]
