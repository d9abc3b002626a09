"""What a head or a fine-tuned model predicts: a column of the utterance table, as classes or as a
score (regression), and the label map read from the training split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from emostore.errors import UserError

TARGETS = ("emotion", "sentiment")


@dataclass
class Target:
    """What to predict: ``column`` of the table, as classes (``labels``) or a score (regression)."""

    name: str
    column: str
    labels: list[str] | None  # None: regression

    @property
    def regression(self) -> bool:
        return self.labels is None

    @property
    def n_out(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "column": self.column, "labels": self.labels}


def resolve_target(table: pd.DataFrame, name: str) -> Target:
    """``emotion``: classes. ``sentiment``: regression on ``sentiment_score`` when the training
    split has scores (CMU-MOSI/MOSEI), else classes of the ``sentiment`` column (e.g. MELD)."""
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    train = table["split"] == "train"
    if name == "sentiment":
        scores = pd.to_numeric(table.loc[train, "sentiment_score"], errors="coerce")
        if scores.notna().any():
            return Target(name, "sentiment_score", None)
    labels = sorted({v for v in table.loc[train, name] if isinstance(v, str) and v})
    if len(labels) < 2:
        raise UserError(f"the training split has {len(labels)} distinct {name!r} labels; "
                        "need at least 2 to train a classifier")
    return Target(name, name, labels)
