"""Any labelled corpus as CSV: one row per utterance, columns named by the user.

Defaults are the headers ``id, dialogue, turn, speaker, text, emotion, sentiment, split, media,
start, end``; only ``text`` or ``media`` is required. Absent ids, turns and splits are derived
and a note says so. Several files (one per split, say) are read as one corpus.
"""

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
        src = str(path)
        col = _columns(path, raw, mapping, given, notes)
        if "text" not in col and "media" not in col:
            raise IngestError(f"{src}: needs a text or a media column (looked for {mapping['text']!r} and "
                              f"{mapping['media']!r}; columns are {list(raw.columns)}); name one with "
                              "--text-col or --media-col")
        if "emotion" not in col and "sentiment" not in col:
            notes.append(f"{path.name}: no label column found (looked for {mapping['emotion']!r} and "
                         f"{mapping['sentiment']!r}, in any case; columns are {list(raw.columns)}): the store has "
                         "no labels; name the column with --label-col to train on it")
        rows = _Rows(path, col, mapping, problems, notes)
        df = rows.ids_and_turns()
        rows.labels(df)
        rows.split(df)
        rows.times(df)
        if "media" in col:
            rows.media(df, media_root or path.parent)
        keep = rows.keep(df)
        if keep_extra:
            used = {c.name for c in col.values()}
            for extra in raw.columns:
                if extra not in used and extra not in df.columns and not str(extra).startswith("Unnamed"):
                    df[extra] = raw[extra].to_numpy()
        return df.loc[keep].reset_index(drop=True)


def _columns(path: Path, raw: pd.DataFrame, mapping: dict[str, str], given: dict[str, str],
             notes: list[str]) -> dict[str, pd.Series]:
    """The file's column for each field: its header as named (exactly, else in another case,
    which a note says); a column asked for by an option that is not there is refused."""
    by_case = {str(c).casefold(): c for c in raw.columns}
    col: dict[str, pd.Series] = {}
    missing = []
    for f in FIELDS:
        name = mapping[f]
        header = name if name in raw.columns else by_case.get(name.casefold())
        if header is None:
            if f in given:
                missing.append(f"{f} ({name!r})")
            continue
        if header != name:
            notes.append(f"{path.name}: header {header!r} taken as {f} (asked for {name!r}; case ignored)")
        col[f] = raw[header]
    if missing:
        raise IngestError(f"{path}: column(s) {', '.join(missing)} not found; columns are {list(raw.columns)}")
    return col


class _Rows:
    """The fields of one file's rows, derived where absent (each derivation noted), with a
    problem for each bad value (row and id named)."""

    def __init__(self, path: Path, col: dict[str, pd.Series], mapping: dict[str, str], problems: list[Problem],
                 notes: list[str]):
        self.path, self.src, self.col, self.mapping = path, str(path), col, mapping
        self.problems, self.notes = problems, notes
        self.n = len(next(iter(col.values())))
        self.line = np.arange(self.n) + 2  # 1-based line in the file, after the header

    def problem(self, i: int, why: str, df: pd.DataFrame | None = None, level: str = "error") -> None:
        self.problems.append(Problem(self.src, why, row=int(self.line[i]),
                                     id=df["id"].iat[i] if df is not None else None, level=level))

    def ids_and_turns(self) -> pd.DataFrame:
        col, name, path = self.col, self.path.name, self.path
        df = pd.DataFrame(index=range(self.n))
        if "id" in col:
            df["id"] = col["id"].to_numpy()
        else:
            df["id"] = [f"{path.stem}-{i}" for i in range(self.n)]
            self.notes.append(f"{name}: no {self.mapping['id']!r} column; ids derived as {path.stem}-<row>")
        for f in ("speaker", "text", "emotion", "sentiment", "media"):
            df[f] = col[f].to_numpy() if f in col else None
        if "dialogue" in col:
            df["dialogue"] = col["dialogue"].to_numpy()
            nodia = df["dialogue"].isna().to_numpy()
            df.loc[nodia, "dialogue"] = df.loc[nodia, "id"]
        else:
            df["dialogue"] = df["id"]
            self.notes.append(f"{name}: no {self.mapping['dialogue']!r} column; each utterance is its own dialogue")
        order = df.groupby("dialogue", sort=False).cumcount().to_numpy()
        if "turn" not in col:
            df["turn"] = order
            self.notes.append(f"{name}: no {self.mapping['turn']!r} column; turns are the order of rows in each "
                              "dialogue")
            return df
        turn = pd.to_numeric(col["turn"], errors="coerce").to_numpy()
        bad = np.isnan(turn) | (turn < 0) | (turn != np.round(turn))
        for i in np.flatnonzero(bad & col["turn"].notna().to_numpy()):
            self.problem(i, f"turn {col['turn'].iat[i]!r} is not a non-negative integer; using the row's order in "
                            "its dialogue", df, level="warning")
        df["turn"] = np.where(bad, order, np.nan_to_num(turn)).astype(int)
        return df

    def labels(self, df: pd.DataFrame) -> None:
        """Emotions in lower case; a sentiment column of numbers is a score, of words a label."""
        col = self.col
        if "emotion" in col:
            df["emotion"] = [v.strip().lower() if isinstance(v, str) and v.strip() else None for v in df["emotion"]]
        if "sentiment" in col:
            num = pd.to_numeric(col["sentiment"], errors="coerce")
            if col["sentiment"].notna().any() and num.notna().sum() >= 0.9 * col["sentiment"].notna().sum():
                df["sentiment_score"] = num.to_numpy()
                df["sentiment"] = None
            else:
                df["sentiment"] = [v.strip().lower() if isinstance(v, str) and v.strip() else None
                                   for v in col["sentiment"]]

    def split(self, df: pd.DataFrame) -> None:
        """The split column, else the file name's, else a stable hash of the dialogue."""
        name = self.path.name
        if "split" in self.col:
            df["split"] = self.col["split"].to_numpy()
        elif (s := _split_from_name(self.path)) is not None:
            df["split"] = s
            self.notes.append(f"{name}: no {self.mapping['split']!r} column; split {s!r} taken from the file name")
        else:
            df["split"] = [hashed_split(str(d)) for d in df["dialogue"]]
            self.notes.append(f"{name}: no {self.mapping['split']!r} column; splits derived 80/10/10 from a hash "
                              "of the dialogue id (dialogues never straddle splits)")

    def times(self, df: pd.DataFrame) -> None:
        for f in ("start", "end"):
            df[f] = pd.to_numeric(self.col[f], errors="coerce").to_numpy() if f in self.col else np.nan
        if "start" in self.col and "end" in self.col:
            wrong = (df["end"] <= df["start"]).to_numpy()
            for i in np.flatnonzero(wrong):
                self.problem(i, f"segment end {df['end'].iat[i]} is not after start {df['start'].iat[i]}; times "
                                "dropped", df)
            df.loc[wrong, ["start", "end"]] = np.nan

    def media(self, df: pd.DataFrame, base: Path) -> None:
        """Media paths resolved against ``base``; a missing file is a warning (the row stays)."""
        resolved = []
        for i, m in enumerate(df["media"]):
            if not isinstance(m, str) or not m.strip():
                resolved.append(None)
                continue
            p = Path(m.strip()).expanduser()
            p = p if p.is_absolute() else (base / p)
            if not p.exists():
                self.problems.append(Problem(str(p), "media file not found", row=int(self.line[i]),
                                             id=df["id"].iat[i], level="warning"))
            resolved.append(str(p.resolve()))
        df["media"] = resolved

    def keep(self, df: pd.DataFrame) -> np.ndarray:
        """Rows with an id and a text or media; the others are problems."""
        text_ok = np.array([isinstance(t, str) and bool(t.strip()) for t in df["text"]])
        has_media = df["media"].notna().to_numpy()
        for i in np.flatnonzero(~text_ok & ~has_media):
            self.problem(i, "empty text and no media; row dropped", df)
        media_only = int((~text_ok & has_media).sum())
        if media_only:  # audio- or image-only rows are data, not problems: one line says so
            self.notes.append(f"{self.path.name}: {media_only} of {len(df)} rows have media and no text (their "
                              "text features will be masked)")
        df.loc[~text_ok, "text"] = None
        noid = df["id"].isna().to_numpy()
        for i in np.flatnonzero(noid):
            self.problem(i, "empty id; row dropped")
        return (text_ok | has_media) & ~noid
