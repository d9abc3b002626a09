"""MELD: the official ``{train,dev,test}_sent_emo.csv`` files, plus MELD.Raw clips when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from emostore.ingest.base import (
    Adapter,
    IngestError,
    IngestResult,
    Problem,
    finalize,
    read_csv,
    register,
    repair_mojibake,
)

CSV_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
#: MELD.Raw folder of each split's clips, named ``dia{D}_utt{U}.mp4``.
CLIP_DIRS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
REQUIRED = ["Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID"]


def _seconds(stamp: object) -> float:
    """``00:20:57,256`` -> 1257.256 (NaN when absent or malformed)."""
    try:
        hms, ms = str(stamp).strip().split(",")
        h, m, s = (int(x) for x in hms.split(":"))
        return h * 3600 + m * 60 + s + int(ms) / 1000
    except (ValueError, AttributeError):
        return float("nan")


def _numbers(raw: pd.DataFrame, col: str) -> np.ndarray:
    if col not in raw.columns:
        return np.full(len(raw), np.nan)
    return pd.to_numeric(raw[col], errors="coerce").to_numpy(dtype=float)


def _find(root: Path, name: str) -> Path | None:
    for base in (root, root / "MELD.Raw", root / "data"):
        if (base / name).exists():
            return base / name
    return None


def _split_table(path: Path, split: str, problems: list[Problem]) -> tuple[pd.DataFrame, pd.Series, pd.Series] | None:
    """One split's CSV as utterance rows, with its dialogue and utterance numbers; None if unreadable."""
    raw = read_csv(path, problems)
    if raw is None:
        return None
    missing = [c for c in REQUIRED if c not in raw.columns]
    if missing:
        problems.append(Problem(str(path), f"missing column(s) {missing}; columns are {list(raw.columns)}"))
        return None
    d = pd.to_numeric(raw["Dialogue_ID"], errors="coerce")
    u = pd.to_numeric(raw["Utterance_ID"], errors="coerce")
    bad = (d.isna() | u.isna()).to_numpy()
    for i in np.flatnonzero(bad):
        problems.append(Problem(str(path), "Dialogue_ID/Utterance_ID is not an integer; row skipped", row=int(i) + 2))
    raw, d, u = raw.loc[~bad], d[~bad].astype(int), u[~bad].astype(int)
    df = pd.DataFrame({
        "id": [f"meld-{split}-dia{a}-utt{b}" for a, b in zip(d, u)],
        "dialogue": [f"{split}-dia{a}" for a in d],
        "turn": u.to_numpy(),
        "speaker": raw["Speaker"].to_numpy(),
        "text": raw["Utterance"].to_numpy(),
        "emotion": raw["Emotion"].str.strip().str.lower().to_numpy(),
        "sentiment": raw["Sentiment"].str.strip().str.lower().to_numpy(),
        "split": split,
        "season": _numbers(raw, "Season"),
        "episode": _numbers(raw, "Episode"),
        "episode_start": [_seconds(x) for x in raw.get("StartTime", [None] * len(raw))],
        "episode_end": [_seconds(x) for x in raw.get("EndTime", [None] * len(raw))],
    })
    return df, d, u


def _link_clips(df: pd.DataFrame, d: pd.Series, u: pd.Series, clips: Path, problems: list[Problem]) -> None:
    """``media``: each row's MELD.Raw clip ``dia{D}_utt{U}.mp4``; a missing clip is a warning."""
    media = [clips / f"dia{a}_utt{b}.mp4" for a, b in zip(d, u)]
    exists = [p.exists() for p in media]
    for uid, p, ok in zip(df["id"], media, exists):
        if not ok:
            problems.append(Problem(str(p), "clip missing from MELD.Raw; row kept without media", id=uid,
                                    level="warning"))
    df["media"] = [str(p.resolve()) if ok else None for p, ok in zip(media, exists)]


@register
class MeldAdapter(Adapter):
    name = "meld"

    def load(self, root: Path, *, fix_mojibake: bool = True) -> IngestResult:  # type: ignore[override]
        root = Path(root)
        if not root.is_dir():
            raise IngestError(f"{root}: not a directory (expected the MELD folder with *_sent_emo.csv)")
        problems: list[Problem] = []
        notes: list[str] = []
        frames = []
        clip_dirs = {s: _find(root, d) for s, d in CLIP_DIRS.items()}
        have_video = any(clip_dirs.values())
        if not have_video:
            notes.append("no MELD.Raw clip folders found: text only, no media")
        for split, fname in CSV_FILES.items():
            path = _find(root, fname)
            if path is None:
                problems.append(Problem(str(root / fname), "MELD CSV not found; split skipped", level="warning"))
                continue
            read = _split_table(path, split, problems)
            if read is None:
                continue
            df, d, u = read
            if fix_mojibake:
                n = repair_mojibake(df, ["text", "speaker"], str(path), problems)
                if n:
                    notes.append(f"{path.name}: repaired mojibake in {n} cells (recorded as repairs)")
            clips = clip_dirs[split]
            if clips is not None:
                _link_clips(df, d, u, clips, problems)
            elif have_video:
                problems.append(Problem(str(root / CLIP_DIRS[split]), f"no clip folder for {split}; "
                                        "its rows have no media", level="warning"))
            empty = df["text"].isna() | (df["text"].fillna("").str.strip() == "")
            for i in np.flatnonzero(empty.to_numpy()):
                problems.append(Problem(str(path), "empty utterance text", row=int(i) + 2, id=df["id"].iat[i]))
            frames.append(df)
        if not frames:
            listing = "; ".join(str(p) for p in problems) or "nothing found"
            raise IngestError(f"{root}: no MELD CSV could be read ({listing})")
        table = finalize(pd.concat(frames, ignore_index=True), "meld", problems, str(root))
        return IngestResult(table, "meld", problems, notes,
                            meta={"labels": ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"]})
