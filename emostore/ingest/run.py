"""Ingest a corpus into a new store: adapter -> utterance table -> ``Store.create``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emostore.ingest.base import IngestResult, get_adapter
from emostore.store import Store


def ingest(adapter: str, source: Path | list[Path], out: Path, *, overwrite: bool = False,
           **options: Any) -> tuple[Store, IngestResult]:
    """Read ``source`` with the named adapter and write the table (plus its problems) to ``out``."""
    result = get_adapter(adapter).load(source, **options)
    sources = [str(p) for p in (source if isinstance(source, list) else [source])]
    attrs = {
        "adapter": adapter,
        "source": sources,
        "problems": [p.to_dict() for p in result.problems if p.level != "repair"],
        "repairs": [p.to_dict() for p in result.problems if p.level == "repair"],
        "notes": result.notes,
        "meta": result.meta,
    }
    store = Store.create(out, result.table, dataset=result.dataset, table_attrs=attrs, overwrite=overwrite)
    return store, result
