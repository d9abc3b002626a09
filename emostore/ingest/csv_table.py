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
        missing = [f"{f} ({mapping[f]!r})" for f in given if mapping[f] not in raw.columns]
        if missing:
            raise IngestError(f"{src}: column(s) {', '.join(missing)} not found; columns are {list(raw.columns)}")
        col = {f: raw[mapping[f]] for f in FIELDS if mapping[f] in raw.columns}
        if "text" not in col and "media" not in col:
            raise IngestError(f"{src}: needs a text or a media column (looked for {mapping['text']!r} and "
                              f"{mapping['media']!r}; columns are {list(raw.columns)}); name one with "
                              "--text-col or --media-col")
        n = len(raw)
        line = np.arange(n) + 2  # 1-based line in the file, after the header
        df = pd.DataFrame(index=range(n))
        if "id" in col:
            df["id"] = col["id"].to_numpy()
        else:
            df["id"] = [f"{path.stem}-{i}" for i in range(n)]
            notes.append(f"{path.name}: no {mapping['id']!r} column; ids derived as {path.stem}-<row>")
        for f in ("speaker", "text", "emotion", "sentiment", "media"):
            df[f] = col[f].to_numpy() if f in col else None
        if "emotion" in col:
            df["emotion"] = [v.strip().lower() if isinstance(v, str) and v.strip() else None for v in df["emotion"]]
        if "dialogue" in col:
            df["dialogue"] = col["dialogue"].to_numpy()
            nodia = df["dialogue"].isna().to_numpy()
            df.loc[nodia, "dialogue"] = df.loc[nodia, "id"]
        else:
            df["dialogue"] = df["id"]
            notes.append(f"{path.name}: no {mapping['dialogue']!r} column; each utterance is its own dialogue")
        order = df.groupby("dialogue", sort=False).cumcount().to_numpy()
        if "turn" in col:
            turn = pd.to_numeric(col["turn"], errors="coerce").to_numpy()
            bad = np.isnan(turn) | (turn < 0) | (turn != np.round(turn))
            for i in np.flatnonzero(bad & col["turn"].notna().to_numpy()):
                problems.append(Problem(src, f"turn {col['turn'].iat[i]!r} is not a non-negative integer; "
                                        "using the row's order in its dialogue", row=int(line[i]),
                                        id=df["id"].iat[i], level="warning"))
            df["turn"] = np.where(bad, order, np.nan_to_num(turn)).astype(int)
        else:
            df["turn"] = order
            notes.append(f"{path.name}: no {mapping['turn']!r} column; turns are the order of rows in each dialogue")
        # sentiment: numbers are a score, words a label
        if "sentiment" in col:
            num = pd.to_numeric(col["sentiment"], errors="coerce")
            if col["sentiment"].notna().any() and num.notna().sum() >= 0.9 * col["sentiment"].notna().sum():
                df["sentiment_score"] = num.to_numpy()
                df["sentiment"] = None
            else:
                df["sentiment"] = [v.strip().lower() if isinstance(v, str) and v.strip() else None
                                   for v in col["sentiment"]]
        # split: column, else file name, else a stable hash of the dialogue
        if "split" in col:
            df["split"] = col["split"].to_numpy()
        elif (s := _split_from_name(path)) is not None:
            df["split"] = s
            notes.append(f"{path.name}: no {mapping['split']!r} column; split {s!r} taken from the file name")
        else:
            df["split"] = [hashed_split(str(d)) for d in df["dialogue"]]
            notes.append(f"{path.name}: no {mapping['split']!r} column; splits derived 80/10/10 from a "
                         "hash of the dialogue id (dialogues never straddle splits)")
        for f in ("start", "end"):
            df[f] = pd.to_numeric(col[f], errors="coerce").to_numpy() if f in col else np.nan
        if "start" in col and "end" in col:
            wrong = (df["end"] <= df["start"]).to_numpy()
            for i in np.flatnonzero(wrong):
                problems.append(Problem(src, f"segment end {df['end'].iat[i]} is not after start "
                                        f"{df['start'].iat[i]}; times dropped", row=int(line[i]),
                                        id=df["id"].iat[i]))
            df.loc[wrong, ["start", "end"]] = np.nan
        if "media" in col:
            base = media_root or path.parent
            resolved = []
            for i, m in enumerate(df["media"]):
                if not isinstance(m, str) or not m.strip():
                    resolved.append(None)
                    continue
                p = Path(m.strip()).expanduser()
                p = p if p.is_absolute() else (base / p)
                if not p.exists():
                    problems.append(Problem(str(p), "media file not found", row=int(line[i]),
                                            id=df["id"].iat[i], level="warning"))
                resolved.append(str(p.resolve()))
            df["media"] = resolved
        # an utterance needs text or media
        text_ok = np.array([isinstance(t, str) and bool(t.strip()) for t in df["text"]])
        has_media = df["media"].notna().to_numpy()
        for i in np.flatnonzero(~text_ok & ~has_media):
            problems.append(Problem(src, "empty text and no media; row dropped", row=int(line[i]),
                                    id=df["id"].iat[i]))
        media_only = int((~text_ok & has_media).sum())
        if media_only:  # audio- or image-only rows are data, not problems: one line says so
            notes.append(f"{path.name}: {media_only} of {len(df)} rows have media and no text "
                         "(their text features will be masked)")
        df.loc[~text_ok, "text"] = None
        nolabel = df["id"].isna().to_numpy()
        for i in np.flatnonzero(nolabel):
            problems.append(Problem(src, "empty id; row dropped", row=int(line[i])))
        keep = (text_ok | has_media) & ~nolabel
        if keep_extra:
            used = {mapping[f] for f in col}
            for extra in raw.columns:
                if extra not in used and extra not in df.columns and not str(extra).startswith("Unnamed"):
                    df[extra] = raw[extra].to_numpy()
        return df.loc[keep].reset_index(drop=True)
