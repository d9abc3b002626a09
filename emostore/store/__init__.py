"""The feature store: utterance table + Zarr feature sets, resumable and safe to kill."""

from emostore.core.hashing import config_hash
from emostore.store.feature_set import FeatureSet, Shard
from emostore.store.location import Location
from emostore.store.store import ConfigMismatch, Store, StoreNotFound

__all__ = ["ConfigMismatch", "FeatureSet", "Location", "Shard", "Store", "StoreNotFound", "config_hash"]
