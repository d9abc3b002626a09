"""Any labelled corpus as CSV: one row per utterance, columns named by the user.

Defaults are the headers ``id, dialogue, turn, speaker, text, emotion, sentiment, split, media,
start, end``; only ``text`` or ``media`` is required. Absent ids, turns and splits are derived
and a note says so. Several files (one per split, say) are read as one corpus.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    repair_mojibake,
)

FIELDS = ["id", "dialogue", "turn", "speaker", "text", "emotion", "sentiment", "split", "media", "start", "end"]


def _split_from_name(path: Path) -> str | None:
    stem = path.stem.lower()
    for token in ("train", "valid", "dev", "val", "test"):
        if token in stem.replace("-", "_").split("_") or stem == token or stem.startswith(token):
            return normalize_split(token)
    return None


@register
class CsvAdapter(Adapter):
    name = "csv"

    def load(self, root: Path | list[Path], *, columns: dict[str, str] | None = None,  # type: ignore[override]
             dataset: str | None = None, fix_mojibake: bool = True, media_root: Path | None = None,
             keep_extra: bool = True) -> IngestResult:
        paths = [Path(p) for p in (root if isinstance(root, list) else [root])]
        given = {k: v for k, v in (columns or {}).items() if v}
        unknown = set(given) - set(FIELDS)
        if unknown:
            raise IngestError(f"unknown table field(s) {sorted(unknown)}; fields are {FIELDS}")
        mapping = {f: given.get(f, f) for f in FIELDS}
        dataset = dataset or (paths[0].stem if len(paths) == 1 else paths[0].parent.name) or "csv"
        problems: list[Problem] = []
        notes: list[str] = []
        frames = []
        for path in paths:
            raw = read_csv(path, problems)
            if raw is None:
                continue
            frame = self._one_file(path, raw, mapping, given, problems, notes, media_root, keep_extra)
            if frame is not None:
                if fix_mojibake:
                    n = repair_mojibake(frame, ["text", "speaker"], str(path), problems)
                    if n:
                        notes.append(f"{path.name}: repaired mojibake in {n} cells (recorded as repairs)")
                frames.append(frame)
        if not frames:
            raise IngestError("no usable rows: " + ("; ".join(str(p) for p in problems if p.level == "error")
                                                    or "no input files"))
        table = pd.concat(frames, ignore_index=True)
        return IngestResult(finalize(table, dataset, problems, ", ".join(map(str, paths))),
                            dataset, problems, sorted(set(notes), key=notes.index))

    def _one_file(self, path: Path, raw: pd.DataFrame, mapping: dict[str, str], given: dict[str, str],
                  problems: list[Problem], notes: list[str], media_root: Path | None,
                  keep_extra: bool) -> pd.DataFrame | None:
        f = _File(path, _columns(path, raw, mapping, given), mapping, problems, notes, len(raw))
        _ids_and_dialogues(f)
        _turns(f)
        _sentiment(f)
        _split(f)
        _times(f)
        if "media" in f.col:
            _media(f, media_root or path.parent)
        keep = _usable(f)
        df = f.df
        if keep_extra:
            used = {mapping[name] for name in f.col}
            for extra in raw.columns:
                if extra not in used and extra not in df.columns and not str(extra).startswith("Unnamed"):
                    df[extra] = raw[extra].to_numpy()
        return df.loc[keep].reset_index(drop=True)


@dataclass
class _File:
    """One CSV file being read: its columns by field, the table being built, and what to report."""

    path: Path
    col: dict[str, pd.Series]
    mapping: dict[str, str]
    problems: list[Problem]
    notes: list[str]
    n: int

    def __post_init__(self) -> None:
        self.src = str(self.path)
        self.line = np.arange(self.n) + 2  # 1-based line in the file, after the header
        self.df = pd.DataFrame(index=range(self.n))

    def problem(self, i: int, message: str, level: str = "error") -> None:
        self.problems.append(Problem(self.src, message, row=int(self.line[i]), id=self.df["id"].iat[i], level=level))

    def absent(self, name: str, what: str) -> None:
        self.notes.append(f"{self.path.name}: no {self.mapping[name]!r} column; {what}")


def _columns(path: Path, raw: pd.DataFrame, mapping: dict[str, str], given: dict[str, str]) -> dict[str, pd.Series]:
    src = str(path)
    missing = [f"{f} ({mapping[f]!r})" for f in given if mapping[f] not in raw.columns]
    if missing:
        raise IngestError(f"{src}: column(s) {', '.join(missing)} not found; columns are {list(raw.columns)}")
    col = {f: raw[mapping[f]] for f in FIELDS if mapping[f] in raw.columns}
    if "text" not in col and "media" not in col:
        raise IngestError(f"{src}: needs a text or a media column (looked for {mapping['text']!r} and "
                          f"{mapping['media']!r}; columns are {list(raw.columns)}); name one with "
                          "--text-col or --media-col")
    return col


def _lower_words(values: pd.Series) -> list[str | None]:
    return [v.strip().lower() if isinstance(v, str) and v.strip() else None for v in values]


def _ids_and_dialogues(f: _File) -> None:
    df, col = f.df, f.col
    if "id" in col:
        df["id"] = col["id"].to_numpy()
    else:
        df["id"] = [f"{f.path.stem}-{i}" for i in range(f.n)]
        f.absent("id", f"ids derived as {f.path.stem}-<row>")
    for name in ("speaker", "text", "emotion", "sentiment", "media"):
        df[name] = col[name].to_numpy() if name in col else None
    if "emotion" in col:
        df["emotion"] = _lower_words(df["emotion"])
    if "dialogue" in col:
        df["dialogue"] = col["dialogue"].to_numpy()
        nodia = df["dialogue"].isna().to_numpy()
        df.loc[nodia, "dialogue"] = df.loc[nodia, "id"]
    else:
        df["dialogue"] = df["id"]
        f.absent("dialogue", "each utterance is its own dialogue")


def _turns(f: _File) -> None:
    order = f.df.groupby("dialogue", sort=False).cumcount().to_numpy()
    if "turn" not in f.col:
        f.df["turn"] = order
        f.absent("turn", "turns are the order of rows in each dialogue")
        return
    given = f.col["turn"]
    turn = pd.to_numeric(given, errors="coerce").to_numpy()
    bad = np.isnan(turn) | (turn < 0) | (turn != np.round(turn))
    for i in np.flatnonzero(bad & given.notna().to_numpy()):
        f.problem(i, f"turn {given.iat[i]!r} is not a non-negative integer; using the row's order in its dialogue",
                  level="warning")
    f.df["turn"] = np.where(bad, order, np.nan_to_num(turn)).astype(int)


def _sentiment(f: _File) -> None:
    """Numbers are a score, words a label."""
    if "sentiment" not in f.col:
        return
    given = f.col["sentiment"]
    num = pd.to_numeric(given, errors="coerce")
    if given.notna().any() and num.notna().sum() >= 0.9 * given.notna().sum():
        f.df["sentiment_score"] = num.to_numpy()
        f.df["sentiment"] = None
    else:
        f.df["sentiment"] = _lower_words(given)


def _split(f: _File) -> None:
    """The column, else the file name, else a stable hash of the dialogue."""
    if "split" in f.col:
        f.df["split"] = f.col["split"].to_numpy()
    elif (s := _split_from_name(f.path)) is not None:
        f.df["split"] = s
        f.absent("split", f"split {s!r} taken from the file name")
    else:
        f.df["split"] = [hashed_split(str(d)) for d in f.df["dialogue"]]
        f.absent("split", "splits derived 80/10/10 from a hash of the dialogue id (dialogues never straddle splits)")


def _times(f: _File) -> None:
    df = f.df
    for name in ("start", "end"):
        df[name] = pd.to_numeric(f.col[name], errors="coerce").to_numpy() if name in f.col else np.nan
    if "start" in f.col and "end" in f.col:
        wrong = (df["end"] <= df["start"]).to_numpy()
        for i in np.flatnonzero(wrong):
            f.problem(i, f"segment end {df['end'].iat[i]} is not after start {df['start'].iat[i]}; times dropped")
        df.loc[wrong, ["start", "end"]] = np.nan


def _media(f: _File, base: Path) -> None:
    resolved: list[str | None] = []
    for i, m in enumerate(f.df["media"]):
        if not isinstance(m, str) or not m.strip():
            resolved.append(None)
            continue
        p = Path(m.strip()).expanduser()
        p = p if p.is_absolute() else (base / p)
        if not p.exists():
            f.problems.append(Problem(str(p), "media file not found", row=int(f.line[i]), id=f.df["id"].iat[i],
                                      level="warning"))
        resolved.append(str(p.resolve()))
    f.df["media"] = resolved


def _usable(f: _File) -> np.ndarray:
    """Rows with an id and text or media (an utterance needs one of them); the others are reported."""
    df = f.df
    text_ok = np.array([isinstance(t, str) and bool(t.strip()) for t in df["text"]])
    has_media = df["media"].notna().to_numpy()
    for i in np.flatnonzero(~text_ok & ~has_media):
        f.problem(i, "empty text and no media; row dropped")
    media_only = int((~text_ok & has_media).sum())
    if media_only:  # audio- or image-only rows are data, not problems: one line says so
        f.notes.append(f"{f.path.name}: {media_only} of {len(df)} rows have media and no text "
                       "(their text features will be masked)")
    df.loc[~text_ok, "text"] = None
    noid = df["id"].isna().to_numpy()
    for i in np.flatnonzero(noid):
        f.problems.append(Problem(f.src, "empty id; row dropped", row=int(f.line[i])))
    return (text_ok | has_media) & ~noid
