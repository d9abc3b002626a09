"""Labelled still images (FER-style): an image-folder tree or a CSV of paths and labels.

* A folder ``ROOT/<split>/<label>/*.jpg|png`` (FER2013's release), or ``ROOT/<label>/*`` without
  split folders (splits then come from a hash of the id, and a note says so).
* A CSV with ``path, label[, split]`` columns (the label column may be ``emotion``, as in
  FER2013's own ``labels.csv``, or any header named by ``label_col``; headers match in any case);
  relative paths are taken from the CSV's folder.

Each image is one utterance (its own dialogue); its id is its path relative to ``ROOT`` (or as
written in the CSV), and ``media`` is its absolute path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from emostore.core.splits import SPLIT_ALIASES
from emostore.extract.video_io import IMAGE_SUFFIXES
from emostore.ingest.base import (
    Adapter,
    IngestError,
    IngestResult,
    Problem,
    finalize,
    hashed_split,
    read_csv,
    register,
)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


@register
class ImagesAdapter(Adapter):
    name = "images"

    def load(self, root: Path, *, dataset: str | None = None, label_col: str | None = None,  # type: ignore[override]
             **_: Any) -> IngestResult:
        root = Path(root)
        problems: list[Problem] = []
        notes: list[str] = []
        if label_col is not None and root.is_dir():
            raise IngestError(f"--label-col names a column of a CSV; {root} is a folder, whose labels are its "
                              "folder names")
        if root.is_file():
            raw = self._from_csv(root, problems, notes, label_col)
            source_root = root.parent
        elif root.is_dir():
            raw = self._from_tree(root, problems, notes)
            source_root = root
        else:
            raise IngestError(f"{root}: no such folder or CSV file")
        if raw.empty:
            raise IngestError(f"{root}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
        raw["dialogue"] = raw["id"]
        raw["turn"] = 0
        name = dataset or (source_root.name if root.is_dir() else root.stem) or "images"
        return IngestResult(finalize(raw, name, problems, str(root)), name, problems, notes)

    def _from_tree(self, root: Path, problems: list[Problem], notes: list[str]) -> pd.DataFrame:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir())
        split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
        rows = []
        if split_dirs:
            for other in sorted(set(subdirs) - set(split_dirs)):
                problems.append(Problem(str(other), "folder is not a split (train/dev/test); skipped",
                                        level="warning"))
            for sd in split_dirs:
                for label_dir in sorted(p for p in sd.iterdir() if p.is_dir()):
                    rows += [(f, label_dir.name, sd.name) for f in _images(label_dir)]
                loose = [p for p in sd.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
                if loose:
                    problems.append(Problem(str(sd), f"{len(loose)} images outside label folders; skipped",
                                            level="warning"))
        else:
            for label_dir in subdirs:
                rows += [(f, label_dir.name, None) for f in _images(label_dir)]
            notes.append(f"{root.name}: no split folders; splits derived 80/10/10 from a hash of the image path")
        ids = [f.relative_to(root).as_posix() for f, _, _ in rows]
        return pd.DataFrame({
            "id": ids,
            "media": [str(f.resolve()) for f, _, _ in rows],
            "emotion": [label.strip().lower() for _, label, _ in rows],
            "split": [s if s is not None else hashed_split(i) for (_, _, s), i in zip(rows, ids)],
        })

    def _from_csv(self, path: Path, problems: list[Problem], notes: list[str],
                  label_col: str | None = None) -> pd.DataFrame:
        raw = read_csv(path, problems)
        if raw is None:
            raise IngestError(f"{path}: " + "; ".join(p.reason for p in problems))
        cols = {str(c).strip().casefold(): c for c in raw.columns}
        columns = ", ".join(map(str, raw.columns))
        if "path" not in cols:
            raise IngestError(f"{path}: needs a 'path' column (and 'label' or 'emotion', optionally 'split'); "
                              f"columns are {columns}")
        label = _label_column(path, cols, label_col, columns, notes)
        paths, labels, splits, ids = [], [], [], []
        for i, p in enumerate(raw[cols["path"]]):
            line = i + 2
            if not isinstance(p, str) or not p.strip():
                problems.append(Problem(str(path), "empty path; row dropped", row=line))
                continue
            rel = p.strip()
            full = Path(rel).expanduser()
            full = full if full.is_absolute() else path.parent / full
            if not full.is_file():
                problems.append(Problem(str(full), "image file not found", row=line, id=rel, level="warning"))
            value = raw[label].iat[i] if label is not None else None
            split = raw[cols["split"]].iat[i] if "split" in cols else None
            ids.append(rel)
            paths.append(str(full.resolve()))
            labels.append(value.strip().lower() if isinstance(value, str) and value.strip() else None)
            splits.append(split if isinstance(split, str) and split.strip() else hashed_split(rel))
        if "split" not in cols:
            notes.append(f"{path.name}: no 'split' column; splits derived 80/10/10 from a hash of the path")
        return pd.DataFrame({"id": ids, "media": paths, "emotion": labels, "split": splits})


#: Headers taken as the label column of an image CSV, in this order, when none is named.
LABEL_HEADERS = ("label", "emotion")


def _label_column(path: Path, cols: dict[str, Any], label_col: str | None, columns: str,
                  notes: list[str]) -> Any:
    """The CSV's label header: ``label_col`` when given (refused when absent), else ``label`` or
    ``emotion``, in any case (noted when the case differs); None, with a note, when there is none."""
    wanted = [label_col] if label_col else list(LABEL_HEADERS)
    for name in wanted:
        header = cols.get(name.strip().casefold())
        if header is not None:
            if header != name:
                notes.append(f"{path.name}: header {header!r} taken as the label column (asked for {name!r}; "
                             "case ignored)")
            return header
    if label_col:
        raise IngestError(f"{path}: --label-col {label_col!r} not found; columns are {columns}")
    notes.append(f"{path.name}: no label column found (looked for {' and '.join(map(repr, LABEL_HEADERS))}, in "
                 f"any case; columns are {columns}): the store has no labels; name the column with --label-col "
                 "to train on it")
    return None
