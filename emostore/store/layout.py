"""Names of a store's top-level nodes (see :mod:`emostore.store.store` for the whole layout)."""

TABLE = "table"
FEATURES = "features"
#: Search indexes, one group each (written by :mod:`emostore.search.index`).
INDEXES = "indexes"
