"""The splits of a store, and the other names corpora and users give them (``validation`` for dev)."""

from __future__ import annotations

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "dev": "dev", "valid": "dev",
                 "val": "dev", "validation": "dev", "test": "test", "testing": "test"}


def split_name(value: str) -> str:
    """``value`` as a store names its split (``validation``, ``valid`` and ``val`` are ``dev``); any
    other name as given, in lower case."""
    name = str(value).strip().lower()
    return SPLIT_ALIASES.get(name, name)
