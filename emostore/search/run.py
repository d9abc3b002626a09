"""What the `index build` and `search` commands do, callable from Python."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from emostore.errors import UserError
from emostore.search.build import build_for_store
from emostore.search.index import NearestIndex, StaleIndex, default_name, index_meta, list_indexes
from emostore.search.query import QUERY_MODALITIES, looks_like_id, neighbours, query_kind, takes
from emostore.store import Store


def build_index(store: Store | Path | str, features: list[str] | None = None, *, kind: str = "flat",
                checkpoint: Path | None = None, name: str | None = None, shards: int = 1, cluster: Any = None,
                train_size: int | None = None, progress: bool = False, **params: Any) -> NearestIndex:
    """Build and save an index inside the store (``STORE/indexes/<name>``), streaming its vectors;
    with ``shards`` in N parts, on the Dask ``cluster`` when given (see :mod:`emostore.search.build`)."""
    store = store if isinstance(store, Store) else Store.open(store)
    if checkpoint is None and not features:
        raise UserError("give --features (e.g. text or text/minilm,audio/egemaps) or --checkpoint")
    if checkpoint is not None and (shards > 1 or cluster is not None):
        raise UserError("--shards and --cluster build indexes of stored features; a checkpoint's embeddings "
                        "are computed in one process")
    names = [store.feature_set(f).name for f in (features or [])]
    index = build_for_store(store, names, kind=kind, checkpoint=checkpoint, shards=shards, cluster=cluster,
                            train_size=train_size, progress=progress, **params)
    index.meta["build_command"] = {"features": names, "kind": kind,
                                   "checkpoint": str(checkpoint) if checkpoint else None, "shards": shards,
                                   "train_size": train_size,
                                   "params": {k: v for k, v in params.items() if v is not None}}
    index.save(store, name or default_name(index.meta["features"], checkpoint))
    return index


def open_index(store: Store, name: str | None = None, features: list[str] | None = None,
               query: str | None = None) -> NearestIndex:
    """The named index, else the one over ``features``, else the store's only (or first) index;
    for a ``query`` that is not a stored id, the first index that takes its kind (text, audio,
    video, image) rather than, say, a checkpoint's index, which takes ids only."""
    have = list_indexes(store)
    if not have:
        first = features or store.feature_sets()[:1] or ["text"]
        hint = f"emostore index build {store.url} --features {','.join(first)}"
        raise UserError(f"{store.url} has no search index; build one with `{hint}`")
    if name is None and features:
        wanted = default_name([store.feature_set(f).name for f in features])
        name = wanted if wanted in have else None
        if name is None:
            raise UserError(f"no index over {', '.join(features)} (have: {', '.join(have)})")
    if name is None and query is not None and len(have) > 1 and not looks_like_id(store, query):
        kind = query_kind(query)
        name = next((n for n in have if takes(index_meta(store, n), kind)), None)
        if name is None:
            raise UserError(f"none of the indexes of {store.url} takes a{'n' if kind[0] in 'aei' else ''} {kind} "
                            f"query (have: {', '.join(have)}; a checkpoint's embeddings take utterance ids); build "
                            f"one with `emostore index build {store.url} --features "
                            f"{sorted(QUERY_MODALITIES[kind])[0]}`")
    name = name or have[0]
    if name not in have:
        raise UserError(f"no index {name!r} in {store.url} (have: {', '.join(have)})")
    return NearestIndex.load(store, name)


def rebuild(store: Store, index: NearestIndex) -> NearestIndex:
    cmd = index.meta.get("build_command", {})
    ckpt = cmd.get("checkpoint")
    return build_index(store, cmd.get("features") or index.meta["features"], kind=cmd.get("kind", "flat"),
                       checkpoint=Path(ckpt) if ckpt else None, name=index.name, shards=int(cmd.get("shards") or 1),
                       train_size=cmd.get("train_size"), **cmd.get("params", {}))


def search(store: Store | Path | str, query: str, *, k: int = 10, split: str | None = None, label: str | None = None,
           index: str | None = None, features: list[str] | None = None, auto_rebuild: bool = False,
           confirm: Callable[[str], bool] | None = None, as_id: bool = False) -> dict[str, Any]:
    """Search the store; a stale index is rebuilt when allowed (flag or confirmation), else refused."""
    store = store if isinstance(store, Store) else Store.open(store, mode="r")
    idx = open_index(store, index, features, query=None if as_id else query)
    reasons = idx.stale_reasons(store)
    if reasons:
        what = f"index {idx.name or ''} is stale: {'; '.join(reasons)}"
        if auto_rebuild or (confirm is not None and sys.stdin.isatty() and confirm(f"{what}. Rebuild it now?")):
            idx = rebuild(Store.open(store.location), idx)
        else:
            raise StaleIndex(f"{what}. Rebuild with `emostore index build {store.url} "
                             f"--features {','.join(idx.meta['features'])}` or search with --rebuild")
    return neighbours(store, idx, query, k=k, split=split, label=label, as_id=as_id)
