"""What the heads read from the utterance table, and only that: the split, the target, and for
dialogue order the dialogue, turn and speaker columns (never the text). String columns are read
as integer codes a block at a time (:meth:`emostore.store.Store.codes`), so millions of rows
cost a few bytes each rather than a Python string each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emostore.core.targets import TARGETS, Target, check_labels, check_target_name, resolve_target  # noqa: F401
from emostore.store import Store


def with_empty(categories: np.ndarray) -> np.ndarray:
    """Categories with ``""`` appended, so that code -1 (an empty value) maps to ``""``."""
    return np.append(np.asarray(categories, dtype=object), np.array([""], dtype=object))


def read_split(store: Store) -> np.ndarray:
    """Each row's split as a string (``""`` when empty); the strings are shared, not one per row."""
    codes, cats = store.codes("split")
    return with_empty(cats)[codes]


def read_target(store: Store, split: np.ndarray, target: str | Target) -> tuple[Target, np.ndarray]:
    """The target and each row's value: a class index (-1: none or unknown) or a score (NaN: none).
    A name is resolved on the training rows as :func:`resolve_target` does."""
    train = split == "train"
    if isinstance(target, str):
        check_target_name(target)
        if target == "sentiment":
            scores = pd.to_numeric(store.columns(["sentiment_score"])["sentiment_score"], errors="coerce")
            if scores[train].notna().any():
                return Target(target, "sentiment_score", None), scores.to_numpy(dtype=np.float32)
        codes, cats = store.codes(target)
        present = np.unique(codes[train & (codes >= 0)])
        target = Target(target, target, check_labels([str(c) for c in cats[present]], target))
    if target.regression:
        values = pd.to_numeric(store.columns([target.column])[target.column], errors="coerce")
        return target, values.to_numpy(dtype=np.float32)
    codes, cats = store.codes(target.column)
    index = {label: i for i, label in enumerate(target.labels or [])}
    lookup = np.array([index.get(str(c), -1) for c in cats] + [-1], dtype=np.int64)
    return target, lookup[codes]


def dialogue_order(store: Store, split: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """``(dialogues, speakers, groups)``: the rows of each (dialogue, split) in turn order, sorted by
    dialogue id then split (a row without a dialogue is a dialogue of its own, keyed by its id);
    each row's speaker number within its dialogue (order of first turn, -1 unknown); each row's
    speaker name (``""`` unknown)."""
    n = len(split)
    dia, _ = store.codes("dialogue")
    alone = np.flatnonzero(dia < 0)
    key = dia.astype(np.int64) + len(alone)
    if len(alone):  # own dialogues, keyed "\0<id>", sort before every named dialogue
        ids = store.rows(alone, ["id"])["id"].astype(str).to_numpy()
        key[alone] = np.argsort(np.argsort(ids, kind="stable"), kind="stable")
    split_code = np.unique(split.astype(str), return_inverse=True)[1]
    turn = pd.to_numeric(store.columns(["turn"])["turn"], errors="coerce").fillna(0).to_numpy()
    order = np.lexsort((np.arange(n), turn, split_code, key))
    k, s = key[order], split_code[order]
    starts = np.flatnonzero(np.r_[True, (k[1:] != k[:-1]) | (s[1:] != s[:-1])]) if n else np.zeros(0, np.int64)
    dialogues = np.split(order, starts[1:])
    spk, spk_names = store.codes("speaker")
    return dialogues, speaker_numbers(order, starts, spk), with_empty(spk_names)[spk]


def speaker_numbers(order: np.ndarray, starts: np.ndarray, speaker: np.ndarray) -> np.ndarray:
    """Each row's speaker number within its dialogue (``order`` cut at ``starts``): 0 for the first
    speaker to talk, 1 for the next new one, ...; -1 where the speaker is unknown."""
    n = len(order)
    out = np.full(n, -1, dtype=np.int64)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    who = speaker[order].astype(np.int64)
    known = who >= 0
    if not known.any():
        return out
    key = group[known] * (int(who.max()) + 1) + who[known]
    pairs, first = np.unique(key, return_index=True)       # each (dialogue, speaker), its first turn
    by_time = np.lexsort((first, pairs // (int(who.max()) + 1)))
    pair_group = (pairs // (int(who.max()) + 1))[by_time]
    group_start = np.flatnonzero(np.r_[True, pair_group[1:] != pair_group[:-1]])
    rank = np.empty(len(pairs), dtype=np.int64)
    rank[by_time] = np.arange(len(pairs)) - np.repeat(group_start, np.diff(np.r_[group_start, len(pairs)]))
    out[order[known]] = rank[np.searchsorted(pairs, key)]
    return out


def unknown_labels(store: Store, split_values: np.ndarray, target: Target, split: str) -> dict[str, int]:
    """Labels of ``split`` that the label map does not know (such rows cannot be scored)."""
    if target.regression:
        return {}
    codes, cats = store.codes(target.column)
    known = set(target.labels or [])
    values = codes[(split_values == split) & (codes >= 0)]
    counts = pd.Series(cats[values]).value_counts()
    return {str(k): int(v) for k, v in counts.items() if k not in known}
