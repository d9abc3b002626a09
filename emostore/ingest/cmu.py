"""CMU-MOSI and CMU-MOSEI: computational sequences (``.csd``) or label CSVs -> utterance table.

Inputs, detected by content:

* ``.csd`` files (HDF5, ``<root>/data/<video>/{features,intervals}``): a labels sequence
  (float features, width 1 = sentiment, width 7 = sentiment + six emotion intensities) and
  optionally a words sequence (byte-string features, ``sp`` = silence) that supplies the text.
* A segments CSV (``segment_id, video_id, clip_id, text, sentiment, start, end, split``).
* The s3prl MOSEI labels CSV (``file, index, start, end, label2a, label2b, label6, label7,
  split``), made by s3prl's ``convert_label.py`` from ``CMU_MOSEI_Labels.csd``:
  ``label2a`` = sentiment < 0 -> 0 else 1; ``label2b`` = sign of the sentiment (-1/0/1);
  ``label6`` = argmax of the six intensities (happy, sad, anger, surprise, disgust, fear), so a
  segment with no emotion at all counts as happy (class 0); ``label7`` = sentiment binned to
  -3..3 (``(0,1] -> 1``, ``[-1,0) -> -1``, ...); ``split`` 0/1/2 = standard train/valid/test
  fold, 3 = video outside the standard folds.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from emostore.ingest.base import (
    Adapter,
    IngestError,
    IngestResult,
    Problem,
    finalize,
    hashed_split,
    normalize_split,
    read_csv,
    register,
)

EMOTIONS6 = ("happy", "sad", "anger", "surprise", "disgust", "fear")
MOSEI_SPLIT_CODES = {"0": "train", "1": "dev", "2": "test"}  # "3": outside the standard folds
FOLDS_FILE = "std_folds.json"
SEGMENT_COLUMNS = {"segment_id", "video_id", "sentiment"}
MOSEI_CSV_COLUMNS = {"file", "index", "label6", "label7"}
LOOKED_FOR = ("a labels .csd (float features of width 1 or 7), a segments CSV "
              f"({', '.join(sorted(SEGMENT_COLUMNS))}) or an s3prl MOSEI labels CSV "
              f"({', '.join(sorted(MOSEI_CSV_COLUMNS))})")
_SEGMENT_KEY = re.compile(r"^(.*)\[(\d+)\]$")


@dataclass
class Sequence:
    """One computational sequence: ``data`` maps a video (or segment) key to (features, intervals)."""

    path: Path
    root: str
    kind: str  # "labels", "words" or "other"
    width: int
    data: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _kind(features: h5py.Dataset) -> tuple[str, int]:
    width = int(np.prod(features.shape[1:])) if features.ndim > 1 else 1
    if features.dtype.kind in "SOU":
        return "words", width
    if features.dtype.kind in "fiu" and width in (1, 7):
        return "labels", width
    return "other", width


def _metadata(group: h5py.Group) -> dict[str, str]:
    meta = {k: str(v) for k, v in group.attrs.items()}
    for k, v in group.items():
        if isinstance(v, h5py.Dataset) and v.size <= 1:
            value = v[()]
            meta[k] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return meta


def read_csd(path: Path, problems: list[Problem]) -> Sequence | None:
    """Read a labels or words sequence (other sequences are only classified); record failures."""
    try:
        with h5py.File(path, "r") as f:
            roots = list(f.keys())
            if len(roots) != 1 or not isinstance(f[roots[0]].get("data"), h5py.Group):
                raise ValueError("not a computational sequence (expected one root group with 'data')")
            group = f[roots[0]]
            data = group["data"]
            keys = list(data.keys())
            kind, width = _kind(data[keys[0]]["features"]) if keys else ("other", 0)
            meta = group.get("metadata")
            seq = Sequence(path, roots[0], kind, width,
                           metadata=_metadata(meta) if isinstance(meta, h5py.Group) else {})
            if kind != "other":
                seq.data = {k: (data[k]["features"][()], np.asarray(data[k]["intervals"][()], float))
                            for k in keys}
            return seq
    except (OSError, KeyError, ValueError, TypeError) as exc:
        problems.append(Problem(str(path), f"unreadable computational sequence: {exc}"))
        return None


def _split_key(key: str) -> tuple[str, str | None]:
    """``video[3]`` -> (``video``, ``3``); a plain video key -> (key, None)."""
    m = _SEGMENT_KEY.match(key)
    return (m.group(1), m.group(2)) if m else (key, None)


def _decode(word: Any) -> str:
    return (word.decode("utf-8", "replace") if isinstance(word, bytes) else str(word)).strip()


def word_index(seq: Sequence) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per video: sorted word midpoints and the words, silences (``sp``) left out."""
    per_video: dict[str, list[tuple[float, str]]] = {}
    for key, (features, intervals) in seq.data.items():
        words = [_decode(w) for w in np.asarray(features).reshape(len(intervals), -1)[:, 0]]
        mids = intervals.reshape(-1, 2).mean(axis=1)
        per_video.setdefault(_split_key(key)[0], []).extend(
            (float(m), w) for m, w in zip(mids, words) if w and w.lower() != "sp")
    index = {}
    for video, pairs in per_video.items():
        pairs.sort(key=lambda p: p[0])
        index[video] = (np.array([p[0] for p in pairs], float), [p[1] for p in pairs])
    return index


def _sentiment(score: float) -> str | None:
    if np.isnan(score):
        return None
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


def csd_rows(labels: Sequence, words: Sequence | None, problems: list[Problem]) -> pd.DataFrame:
    """One row per labelled interval; text from the words whose midpoint falls inside it."""
    index = word_index(words) if words is not None else None
    rows = []
    for key in sorted(labels.data):
        features, intervals = labels.data[key]
        intervals = intervals.reshape(-1, 2)
        features = np.asarray(features, float).reshape(len(intervals), -1)
        video, seg = _split_key(key)
        order = np.argsort(intervals[:, 0], kind="stable")
        for k, i in enumerate(order, 1):
            start, end = (float(x) for x in intervals[i])
            suffix = str(k) if seg is None else (seg if len(order) == 1 else f"{seg}_{k}")
            uid = f"{video}_{suffix}"
            row: dict[str, Any] = {"id": uid, "dialogue": video, "speaker": video, "start": start,
                                   "end": end, "sentiment_score": features[i, 0],
                                   "sentiment": _sentiment(features[i, 0])}
            if features.shape[1] == 7:
                intensities = np.nan_to_num(features[i, 1:])
                row["emotion"] = EMOTIONS6[int(intensities.argmax())] if intensities.max() > 0 else "neutral"
                row.update(zip(EMOTIONS6, features[i, 1:].tolist()))
            if index is not None:
                mids, toks = index.get(video, (np.empty(0), []))
                inside = np.flatnonzero((mids >= start) & (mids < end))
                row["text"] = " ".join(toks[j] for j in inside) or None
                if row["text"] is None:
                    problems.append(Problem(str(words.path), "no words inside this segment",
                                            id=uid, level="warning"))
            rows.append(row)
    return pd.DataFrame(rows)


def _numeric(raw: pd.DataFrame, column: str) -> pd.Series:
    if column not in raw:
        return pd.Series(np.nan, index=raw.index)
    return pd.to_numeric(raw[column], errors="coerce")


def segments_csv_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """A MOSI-style segments CSV: one row per opinion segment with its text."""
    score = pd.to_numeric(raw["sentiment"], errors="coerce")
    return pd.DataFrame({
        "id": raw["segment_id"], "dialogue": raw["video_id"], "speaker": raw["video_id"],
        "text": raw.get("text"), "start": raw.get("start"), "end": raw.get("end"),
        "sentiment_score": score, "sentiment": [_sentiment(s) for s in score],
        "split": raw.get("split"), "_order": _numeric(raw, "clip_id"),
    })


def mosei_csv_rows(raw: pd.DataFrame) -> pd.DataFrame:
    """The s3prl MOSEI labels CSV (see the module docstring for its columns)."""
    score = pd.to_numeric(raw["label7"], errors="coerce")
    label6 = pd.to_numeric(raw["label6"], errors="coerce")
    return pd.DataFrame({
        "id": raw["file"] + "_" + raw["index"], "dialogue": raw["file"], "speaker": raw["file"],
        "start": raw.get("start"), "end": raw.get("end"),
        "emotion": [EMOTIONS6[int(c)] if c in range(6) else None for c in label6],
        "sentiment_score": score, "sentiment": [_sentiment(s) for s in score],
        "split": raw["split"].map(MOSEI_SPLIT_CODES) if "split" in raw else None,
        "_order": _numeric(raw, "index"),
    })


def load_folds(path: Path, problems: list[Problem]) -> dict[str, str] | None:
    """``{"train": [video ids], "valid": [...], "test": [...]}`` -> video id -> split."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {str(v): normalize_split(k) for k, vids in raw.items() for v in vids}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        problems.append(Problem(str(path), f"unreadable folds file: {exc}"))
        return None


def assign_splits(df: pd.DataFrame, folds: dict[str, str] | None, notes: list[str]) -> str:
    """Fill ``split`` in place (CSV value, else folds, else hashed); return the source used."""
    split = df["split"].map(normalize_split) if "split" in df else pd.Series(None, index=df.index)
    has_csv = bool(split.notna().any())
    if folds is not None:
        split = split.where(split.notna(), df["dialogue"].map(folds))
    elif not has_csv:
        df["split"] = df["dialogue"].map(hashed_split)
        notes.append("no folds file and no split column: splits derived by hashing the video id")
        return "hashed"
    df["split"] = split.astype(object).where(split.notna(), None)
    missing = df["split"].isna()
    if missing.any():
        notes.append(f"{int(missing.sum())} segments from {df.loc[missing, 'dialogue'].nunique()} "
                     "videos outside the standard folds have no split")
    return "+".join(s for s, used in (("csv", has_csv), ("folds", folds is not None)) if used)


def _candidates(root: Path) -> tuple[list[Path], list[Path]]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return ([p for p in files if p.suffix.lower() == ".csd"],
            [p for p in files if p.suffix.lower() == ".csv"])


def load_cmu(name: str, root: Path, folds: Path | None = None) -> IngestResult:
    """Shared loader for the MOSI and MOSEI adapters."""
    root = Path(root)
    if not root.exists():
        raise IngestError(f"{root}: no such file or directory")
    problems: list[Problem] = []
    notes: list[str] = []
    csd_paths, csv_paths = _candidates(root)

    sequences = [s for s in (read_csd(p, problems) for p in csd_paths) if s is not None]
    labels = sorted((s for s in sequences if s.kind == "labels"), key=lambda s: -s.width)
    words = [s for s in sequences if s.kind == "words"]
    ignored = [s.path.name for s in sequences if s.kind == "other"]
    ignored += [s.path.name for s in labels[1:] + words[1:]]
    if ignored:
        notes.append(f"ignored computational sequences: {', '.join(ignored)}")

    frames: list[pd.DataFrame] = []
    used: list[str] = []
    if labels:
        frames.append(csd_rows(labels[0], words[0] if words else None, problems))
        used = [str(s.path) for s in labels[:1] + words[:1]]
        if not words:
            notes.append("no words sequence: text left empty")
        source = "csd"
    else:
        source = "csv"
        for path in csv_paths:
            raw = read_csv(path, problems)
            if raw is None:
                continue
            if SEGMENT_COLUMNS.issubset(raw.columns):
                frames.append(segments_csv_rows(raw))
            elif MOSEI_CSV_COLUMNS.issubset(raw.columns):
                frames.append(mosei_csv_rows(raw))
                notes.append(f"{path.name}: labels only (no text); sentiment_score is label7, the "
                             "sentiment binned to -3..3; emotion is label6, the argmax of the six "
                             "intensities, so segments with no emotion count as happy")
            else:
                notes.append(f"{path.name}: not a CMU labels CSV, ignored")
                continue
            used.append(str(path))
    frames = [f for f in frames if not f.empty]
    if not frames:
        found = ", ".join(p.name for p in csd_paths + csv_paths) or "no .csd or .csv files"
        raise IngestError(f"{root}: nothing usable for {name}; looked for {LOOKED_FOR}; found: {found}"
                          + "".join(f"\n  {p}" for p in problems))
    df = pd.concat(frames, ignore_index=True)

    folds_path = folds if folds is not None else (root if root.is_dir() else root.parent) / FOLDS_FILE
    if folds is not None and not folds_path.is_file():
        raise IngestError(f"{folds_path}: folds file not found")
    fold_map = load_folds(folds_path, problems) if folds_path.is_file() else None
    split_source = assign_splits(df, fold_map, notes)

    df["start"] = pd.to_numeric(df["start"], errors="coerce")
    order = df.sort_values(["dialogue", "start", "_order"] if "_order" in df else ["dialogue", "start"],
                           kind="stable")
    df["turn"] = order.groupby("dialogue", sort=False).cumcount().reindex(df.index)
    df = df.drop(columns=["_order"], errors="ignore")
    df["media"] = None

    table = finalize(df, name, problems, str(root))
    meta = {"source": source, "files": used, "split_source": split_source,
            "folds": str(folds_path) if fold_map is not None else None,
            "sequences": {str(s.path): {"root": s.root, "kind": s.kind, "width": s.width,
                                        "metadata": s.metadata} for s in sequences}}
    return IngestResult(table=table, dataset=name, problems=problems, notes=notes, meta=meta)


class _CmuAdapter(Adapter):
    def load(self, root: Path, *, folds: Path | None = None) -> IngestResult:
        """Load ROOT (a directory or one file); ``folds`` defaults to a ``std_folds.json`` beside it."""
        return load_cmu(self.name, Path(root), Path(folds) if folds is not None else None)


@register
class MosiAdapter(_CmuAdapter):
    """CMU-MOSI opinion segments (sentiment in [-3, 3])."""

    name = "mosi"


@register
class MoseiAdapter(_CmuAdapter):
    """CMU-MOSEI segments (sentiment in [-3, 3] and six emotion intensities)."""

    name = "mosei"
