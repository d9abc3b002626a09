"""What fine-tuning reads from a store: the target, the labelled rows of each split, the
tokenized inputs, length-bucketed batches and the cross-fitting folds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emostore.core.targets import TARGETS, Target, resolve_target
from emostore.errors import UserError
from emostore.extract.dialogue_input import DialogueFormat, TokenizedTurn, TurnTokenizer, dialogue_order, dialogue_turns
from emostore.store import Store
from emostore.store.table import columns_hash

#: The columns of the table that fine-tuning reads (besides the target).
READ_COLUMNS = ("id", "dialogue", "turn", "speaker", "text", "split")
#: Batches drawn together and sorted by length, so a batch holds inputs of similar length.
POOL_BATCHES = 50


def table_hash(table: pd.DataFrame, column: str) -> str:
    """A hash of what fine-tuning reads from the table (:data:`READ_COLUMNS` and the target column)."""
    return columns_hash(table, [*READ_COLUMNS, column])


def target_of(store: Store, name: str) -> Target:
    """The target, refusing a store whose train split has no labels (or a single class)."""
    if name not in TARGETS:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    table = store.table
    train = (table["split"] == "train").to_numpy()
    if not train.any():
        raise UserError(f"{store.path}: no rows in the train split; fine-tuning trains on the train split")
    scores = pd.to_numeric(table.loc[train, "sentiment_score"], errors="coerce") if name == "sentiment" else None
    labels = [v for v in table.loc[train, name] if isinstance(v, str) and v]
    if not labels and (scores is None or not scores.notna().any()):
        raise UserError(f"{store.path}: the train split has no {name!r} labels"
                        f"{' or sentiment scores' if name == 'sentiment' else ''}; fine-tuning needs labelled rows")
    try:
        return resolve_target(table, name)
    except UserError as exc:
        raise UserError(f"{store.path}: {exc}") from None


def labels_of(table: pd.DataFrame, target: Target) -> np.ndarray:
    """Per table row: the class index (-1 without a known label) or the score (NaN without one)."""
    if target.regression:
        return pd.to_numeric(table[target.column], errors="coerce").to_numpy(dtype=np.float32)
    index = {label: i for i, label in enumerate(target.labels or [])}
    return np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in table[target.column]], dtype=np.int64)


@dataclass
class FinetuneData:
    """The rows fine-tuning uses, with their labels and token ids (indexed by table row)."""

    target: Target
    y: np.ndarray
    split: np.ndarray
    inputs: list[TokenizedTurn | None]
    table_hash: str

    def rows(self, split: str) -> np.ndarray:
        """Rows of ``split`` with a label (or score) and a text."""
        has = (self.y >= 0) if not self.target.regression else np.isfinite(self.y)
        ok = np.array([t is not None for t in self.inputs])
        return np.flatnonzero((self.split == split) & has & ok)

    def counts(self) -> dict[str, int]:
        return {s: len(self.rows(s)) for s in ("train", "dev", "test")}


def build_data(store: Store, target: Target, fmt: DialogueFormat, tokenizer: TurnTokenizer) -> FinetuneData:
    """Tokenize every row of the store; refuse a format that leaves no room for the utterances."""
    table = store.table
    rows = np.arange(len(table))
    turns = dialogue_turns(table, rows, fmt)
    if fmt.context:
        lengths = tokenizer.utterance_tokens(turns)
        worst = int(np.argmax(lengths)) if lengths else 0
        if lengths and tokenizer.room_for_context(lengths[worst]) <= 0:
            need = lengths[worst] + tokenizer.specials_pair + 1
            raise UserError(f"--past {fmt.past} --future {fmt.future} leaves no room for the utterance with "
                            f"--max-length {tokenizer.max_length}: utterance {table['id'].iat[worst]} alone takes "
                            f"{lengths[worst]} tokens plus {tokenizer.specials_pair} special tokens; use "
                            f"--max-length {need} or more (or no context)")
    y = labels_of(table, target)
    data = FinetuneData(target, y, table["split"].fillna("").astype(str).to_numpy(), tokenizer.encode(turns),
                        table_hash(table, target.column))
    if not len(data.rows("train")):
        raise UserError(f"{store.path}: no train row has both a text and a {target.column!r} value")
    return data


def epoch_batches(lengths: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch, the same for the same (seed, epoch): shuffled rows, sorted by
    length within pools of batches (little padding), in shuffled batch order."""
    rng = np.random.default_rng([seed, epoch])
    order = rows[rng.permutation(len(rows))]
    batches: list[np.ndarray] = []
    pool = POOL_BATCHES * batch_size
    for p in range(0, len(order), pool):
        chunk = order[p:p + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def fold_of_rows(table: pd.DataFrame, rows: np.ndarray, k: int, seed: int) -> dict[int, int]:
    """Cross-fitting folds: whole dialogues (context never crosses folds), shuffled with ``seed``
    and dealt into ``k`` folds of about the same number of rows. Returns row -> fold."""
    if k < 2:
        raise UserError(f"--folds must be 2 or more (or 0 for none), got {k}")
    _, where = dialogue_order(table)
    by_dialogue: dict[int, list[int]] = {}
    for r in rows:
        by_dialogue.setdefault(int(where[r, 0]), []).append(int(r))
    if len(by_dialogue) < k:
        raise UserError(f"--folds {k}: the train split has only {len(by_dialogue)} dialogues")
    keys = sorted(by_dialogue)
    rng = np.random.default_rng([seed, 7919])
    sizes = np.zeros(k, dtype=np.int64)
    out: dict[int, int] = {}
    for d in [keys[i] for i in rng.permutation(len(keys))]:
        f = int(np.argmin(sizes))
        sizes[f] += len(by_dialogue[d])
        for r in by_dialogue[d]:
            out[r] = f
    return out


def describe_rows(data: FinetuneData) -> dict[str, Any]:
    lengths = [len(t.input_ids) for t in data.inputs if t is not None]
    return {"rows": data.counts(), "tokens_mean": round(float(np.mean(lengths)), 1) if lengths else 0,
            "tokens_max": int(max(lengths, default=0)),
            "utterances_cut": int(sum(1 for t in data.inputs if t is not None and t.cut))}
