"""Turn a query (an utterance id, a media file, or a text) into a vector, search, and explain."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emostore.errors import UserError
from emostore.search.index import NearestIndex, combine
from emostore.store import Store

AUDIO = {".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus"}
VIDEO = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def encoder_for(store: Store, feature_set: str) -> Any:
    """Rebuild the encoder a feature set was made with, from its stored configuration."""
    from emostore.extract.base import rebuild_encoder

    fs = store.feature_set(feature_set)
    return rebuild_encoder(fs.modality, {"encoder": fs.attrs.get("encoder"), **fs.config},
                           name=feature_set.split("/", 1)[1], store=store.url)


def query_kind(query: str) -> str:
    path = Path(query).expanduser()
    suffix = path.suffix.lower()
    if suffix in AUDIO | VIDEO | IMAGE:
        if not path.exists():
            raise UserError(f"query file {path} does not exist")
        return "audio" if suffix in AUDIO else ("video" if suffix in VIDEO else "image")
    if path.suffix and path.is_file():
        raise UserError(f"query file {path}: unsupported type {suffix!r} (audio: {sorted(AUDIO)}, "
                        f"video: {sorted(VIDEO)}, images: {sorted(IMAGE)})")
    return "text"


#: The modalities of the feature sets a query of each kind can be encoded into.
QUERY_MODALITIES = {"text": {"text"}, "audio": {"audio"}, "video": {"audio", "visual"}, "image": {"visual"}}


def takes(meta: dict[str, Any], kind: str) -> bool:
    """Whether an index (by its attributes) takes a new ``kind`` query, not a stored id: one over
    stored features of the modalities that query gives (a checkpoint's embeddings take ids only)."""
    if "checkpoint" in meta or not meta.get("features"):
        return False
    return {f.split("/", 1)[0] for f in meta["features"]} <= QUERY_MODALITIES[kind]


def looks_like_id(store: Store, query: str) -> bool:
    """True when ``query`` has the shape of the store's ids (digits aside), e.g. ``d001_u99``."""
    if not query or any(c.isspace() for c in query):
        return False
    sample = np.arange(0, len(store), max(1, len(store) // 2000))
    shapes = {re.sub(r"\d+", "#", str(i)) for i in store.ids_of(sample)}
    return re.sub(r"\d+", "#", query) in shapes


def encode_query(store: Store, index: NearestIndex, query: str,
                 as_id: bool = False) -> tuple[np.ndarray, int | None, str]:
    """``(vector, store row of the query or None, what the query was)``."""
    if not query or not query.strip():
        raise UserError("empty query: give a text, an utterance id of the store, or a media file")
    features: list[str] = index.meta["features"]
    row = store.find_id(query)
    if "checkpoint" in index.meta:
        if row is None:
            raise UserError("an index of a checkpoint's embeddings takes utterance ids as queries; "
                            f"{query!r} is not one (for new utterances use `emostore predict`)")
        return index.vector_of_row(row), row, f"utterance {query}"
    if row is not None:
        parts = []
        for name in features:
            X, mask = store.feature_set(name).read_values(slice(row, row + 1))
            if not mask[0]:
                raise UserError(f"utterance {query!r} has no valid {name} features (see `emostore info`)")
            parts.append(X)
        return combine(parts, features, index.meta.get("standardisation"))[0], row, f"utterance {query}"
    if as_id or looks_like_id(store, query):
        raise UserError(f"unknown utterance id {query!r} in {store.url}")
    kind = query_kind(query)
    media = {"text": None, "media": None}
    wanted = QUERY_MODALITIES[kind]
    if kind == "text":
        media["text"] = query
    else:
        media["media"] = str(Path(query).expanduser().resolve())
    if not takes(index.meta, kind):
        raise UserError(f"the index covers {', '.join(features)}; a {kind} query can only search "
                        f"{' or '.join(sorted(wanted))} features (build an index with --features for that)")
    row = pd.DataFrame([{"id": "query", "dialogue": "query", "turn": 0, "speaker": None, **media,
                         "start": np.nan, "end": np.nan}])
    parts = []
    for name in features:
        out = encoder_for(store, name).encode_rows(row, np.array([0]))
        if not out.ok[0]:
            raise UserError(f"cannot encode the query for {name}: {out.reasons[0]}")
        parts.append(out.values)
    return combine(parts, features, index.meta.get("standardisation"))[0], None, f"{kind} query"


def label_shares(hits: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Count and similarity-weighted share of each label among ``hits``, largest share first.

    A neighbour weighs its similarity, or nothing when that is below zero; when no neighbour is
    above zero (z-scored features, a filter that leaves only distant rows), each weighs the same,
    so the shares are those of the counts and always add up to 1."""
    counts: dict[str, int] = defaultdict(int)
    weights: dict[str, float] = defaultdict(float)
    labelled = [h for h in hits if h["label"] is not None]
    positive = any(h["similarity"] > 0 for h in labelled)
    for h in labelled:
        counts[h["label"]] += 1
        weights[h["label"]] += max(h["similarity"], 0.0) if positive else 1.0
    total = sum(weights.values()) or 1.0
    return {lab: {"count": counts[lab], "share": round(weights[lab] / total, 4)}
            for lab in sorted(counts, key=lambda lab: (-weights[lab], -counts[lab]))}


def neighbours(store: Store, index: NearestIndex, query: str, *, k: int = 10, split: str | None = None,
               label: str | None = None, label_column: str = "emotion", as_id: bool = False) -> dict[str, Any]:
    """The ``k`` nearest stored utterances and the label distribution among them."""
    if k < 1:
        raise UserError("-k must be at least 1")
    vector, self_row, what = encode_query(store, index, query, as_id)
    allowed = np.ones(len(store), dtype=bool)
    if split:
        codes, names = store.codes("split")
        if split not in set(names):
            raise UserError(f"no split {split!r} in the store (have {sorted(names)})")
        allowed &= codes == list(names).index(split)
    if label:
        codes, names = store.codes(label_column)
        allowed &= codes == (list(names).index(label) if label in set(names) else -2)
    if self_row is not None:
        allowed[self_row] = False
    filtered = bool(split or label or self_row is not None)
    sims, rows = index.search(vector[None, :], k, allowed_rows=np.flatnonzero(allowed) if filtered else None)
    found = [(float(sim), int(row)) for sim, row in zip(sims[0], rows[0]) if row >= 0]
    columns = ["id", "dialogue", "speaker", "text", label_column, "sentiment", "sentiment_score", "split"]
    table = store.rows(np.array([r for _, r in found] + ([self_row] if self_row is not None else []),
                                dtype=np.int64), columns)
    hits = []
    for j, (sim, _) in enumerate(found):
        r = table.iloc[j]
        hits.append({
            "id": r["id"], "dialogue": r["dialogue"], "speaker": r["speaker"], "text": r["text"],
            "label": r[label_column], "sentiment": r["sentiment"],
            "sentiment_score": None if pd.isna(r["sentiment_score"]) else float(r["sentiment_score"]),
            "split": r["split"], "similarity": round(sim, 4),
        })
    distribution = label_shares(hits)
    utterance = None
    if self_row is not None:  # a query by id: show the utterance itself, not only its id
        r = table.iloc[len(found)]
        utterance = {"id": r["id"], "dialogue": r["dialogue"], "speaker": r["speaker"], "text": r["text"],
                     "label": r[label_column], "split": r["split"]}
    return {"query": query, "query_kind": what, "query_utterance": utterance,
            "index": index.name,
            "features": index.meta["features"], "k": k, "neighbours": hits, "labels": distribution,
            "nearest_emotion": next(iter(distribution), None)}
