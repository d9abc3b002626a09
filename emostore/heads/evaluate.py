"""Evaluation of a checkpoint on a split of a store, with scikit-learn's metrics.

Classification: accuracy, per-class precision/recall/F1, macro and weighted averages and the
confusion matrix (text and PNG, counts and row-normalised). Regression on sentiment scores in
[-3, 3] (CMU-MOSI/MOSEI conventions): MAE, Pearson correlation, Acc-2 both ways (negative vs
positive over non-zero truths, and negative vs non-negative over all), their weighted F1, Acc-7.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emostore.core.metrics import classification_metrics, regression_metrics  # noqa: F401
from emostore.errors import UserError
from emostore.heads import checkpoint as ckpt_io
from emostore.heads.data import HeadData
from emostore.heads.table_columns import unknown_labels
from emostore.heads.train import predict_rows
from emostore.store import Store


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray      # class indices, or scores
    #: Each row's utterance text ("" without one), read by :func:`evaluate` for the report.
    texts: list[str] | None = None
    #: ``[rows, classes]`` class probabilities (the softmax of the outputs, as ``predict`` gives); None for scores.
    probabilities: np.ndarray | None = None


def evaluate_data(model: Any, data: HeadData, split: str) -> Evaluation:
    """Evaluate an in-memory model on ``split`` of already loaded ``data``."""
    rows = data.rows(split)
    if not len(rows):
        raise UserError(f"no rows of split {split!r} have a {data.target.column!r} value the checkpoint can score "
                        f"(target {data.target.name!r}); evaluate on a store and split with such labels")
    out = predict_rows(model, data, rows)
    y = data.y.cpu().numpy()[rows]
    if data.target.regression:
        pred = out[:, 0].numpy()
        metrics = regression_metrics(y, pred)
    else:
        pred = out.argmax(1).numpy()
        metrics = classification_metrics(y, pred, data.target.labels or [])
    metrics["split"] = split
    probabilities = None if data.target.regression else torch.softmax(out.float(), dim=-1).numpy()
    return Evaluation(metrics, data.ids_of(rows), y, pred, probabilities=probabilities)


def texts_of(data: HeadData, rows: np.ndarray) -> list[str] | None:
    """The utterance texts of ``rows`` ("" for rows without text); None when the data has no store."""
    if data.store is None:
        return None
    return [t or "" for t in data.store.rows(rows, ["text"])["text"]]


def predictions_table(ev: Evaluation) -> Any:
    """``predictions.csv``: id, text, true and predicted label, and one probability column per class
    (``p_<label>``); for scores, id, text, true and predicted score."""
    import pandas as pd

    m = ev.metrics
    text = {"text": ev.texts} if ev.texts is not None else {}
    if m["task"] == "regression":
        return pd.DataFrame({"id": ev.ids, **text, "true": ev.y_true, "predicted": ev.y_pred})
    labels = m["labels"]
    table = pd.DataFrame({"id": ev.ids, **text, "true": [labels[i] for i in ev.y_true],
                          "predicted": [labels[i] for i in ev.y_pred]})
    if ev.probabilities is not None:
        for j, label in enumerate(labels):
            table[f"p_{label}"] = ev.probabilities[:, j].round(6)
    return table


def evaluate(checkpoint: Path, store: Path | str | Store, split: str = "test", device: str = "cpu",
             memory_budget: str | int | None = None) -> Evaluation:
    """Load ``checkpoint``, check it against ``store`` and evaluate it on ``split`` (streaming the
    features when they do not fit ``memory_budget``)."""
    st = store if isinstance(store, Store) else Store.open(store, mode="r")
    ck = ckpt_io.load(checkpoint, st)
    data = ck.load_data(st, memory_budget=memory_budget)
    from emostore.core.runtime import resolve_device

    dev = resolve_device(device)
    data.to(dev)
    ev = evaluate_data(ck.model.to(dev), data, split)
    ev.texts = texts_of(data, data.rows(split))
    ev.metrics.update({"checkpoint": str(checkpoint), "store": st.url, "head": ck.head,
                       "feature_sets": ck.feature_sets, "target": ck.target.name})
    skipped = unknown_labels(st, data.split, data.target, split)
    if skipped:
        ev.metrics["skipped_unknown_labels"] = skipped
    return ev


# ----- rendering -------------------------------------------------------------------------------
def confusion_text(cm: list[list[float]], labels: list[str], digits: int = 0) -> str:
    """The confusion matrix as aligned text, true labels in rows."""
    cells = [[f"{v:.{digits}f}" for v in row] for row in cm]
    width = max([len(lab) for lab in labels] + [len(c) for row in cells for c in row] + [4])
    head = " " * (width + 2) + " ".join(lab[:width].rjust(width) for lab in labels)
    lines = ["true (rows) / predicted (columns)", head]
    lines += [lab[:width].rjust(width) + "  " + " ".join(c.rjust(width) for c in row)
              for lab, row in zip(labels, cells)]
    return "\n".join(lines)


def plot_confusion(cm: list[list[float]], labels: list[str], path: Path, *, normalised: bool, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(labels), 0.8 + 0.7 * len(labels)))
    im = ax.imshow(arr, cmap="Blues", vmin=0, vmax=1 if normalised else max(arr.max(), 1))
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            text = f"{arr[i, j]:.2f}" if normalised else f"{int(arr[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if arr[i, j] > 0.6 * (1 if normalised else arr.max()) else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_scatter(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true, y_pred, s=6, alpha=0.5)
    ax.plot([-3, 3], [-3, 3], color="grey", lw=1)
    ax.set_xlabel("true score")
    ax.set_ylabel("predicted score")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_markdown(m: dict[str, Any]) -> str:
    lines = [f"# Evaluation of `{m.get('head', '?')}` on the {m['split']} split", "",
             f"- checkpoint: `{m.get('checkpoint', '')}`", f"- store: `{m.get('store', '')}`",
             f"- feature sets: {', '.join(m.get('feature_sets', []))}", f"- rows: {m['n']}", ""]
    if m["task"] == "regression":
        lines += ["| MAE | corr | Acc-2 (neg/pos) | F1 (neg/pos) | Acc-2 (neg/non-neg) | F1 (neg/non-neg) | Acc-7 |",
                  "|---|---|---|---|---|---|---|",
                  (f"| {m['mae']:.4f} | {m['corr']:.4f} | {m['acc2']:.4f} | {m['f1']:.4f} | {m['acc2_nonneg']:.4f} "
                  f"| {m['f1_nonneg']:.4f} | {m['acc7']:.4f} |"), "", "![scatter](scatter.png)"]
        return "\n".join(lines) + "\n"
    lines += [f"accuracy {m['accuracy']:.4f}, weighted F1 {m['weighted_f1']:.4f}, macro F1 {m['macro_f1']:.4f}", "",
              "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {lab} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |"
              for lab, c in m["per_class"].items()]
    lines += ["", "```", confusion_text(m["confusion_matrix"], m["labels"]), "```", "",
              "![confusion counts](confusion_counts.png)", "![confusion row-normalised](confusion_normalised.png)"]
    return "\n".join(lines) + "\n"


def write_report(ev: Evaluation, directory: Path) -> list[Path]:
    """``metrics.json``, ``predictions.csv``, the plots and ``summary.md`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    m = ev.metrics
    written = [directory / "metrics.json", directory / "predictions.csv", directory / "summary.md"]
    written[0].write_text(json.dumps(m, indent=2) + "\n")
    predictions_table(ev).to_csv(written[1], index=False)
    if m["task"] == "regression":
        written.append(plot_scatter(ev.y_true, ev.y_pred, directory / "scatter.png", f"{m.get('head')} ({m['split']})"))
    else:
        labels = m["labels"]
        written.append(plot_confusion(m["confusion_matrix"], labels, directory / "confusion_counts.png",
                                      normalised=False, title=f"{m.get('head')} ({m['split']}): counts"))
        written.append(plot_confusion(m["confusion_matrix_normalised"], labels, directory / "confusion_normalised.png",
                                      normalised=True, title=f"{m.get('head')} ({m['split']}): row-normalised"))
    written[2].write_text(summary_markdown(m))
    return written


def show(m: dict[str, Any]) -> None:
    """Print an evaluation with rich."""
    from rich.table import Table

    from emostore.display import console, counts_text, errors

    console.print(f"[bold]{m.get('head', '')}[/bold] on the [cyan]{m['split']}[/cyan] split "
                  f"({m['n']} rows; {', '.join(m.get('feature_sets', []))})")
    if m["task"] == "regression":
        console.print(f"MAE {m['mae']:.4f}  corr {m['corr']:.4f}  Acc-2 {m['acc2']:.4f} (F1 {m['f1']:.4f}, "
                      f"neg vs pos, {m['n_nonzero']} rows)  Acc-2 {m['acc2_nonneg']:.4f} (F1 {m['f1_nonneg']:.4f}, "
                      f"neg vs non-neg)  Acc-7 {m['acc7']:.4f}")
        return
    console.print(f"accuracy {m['accuracy']:.4f}   weighted F1 {m['weighted_f1']:.4f}   macro F1 {m['macro_f1']:.4f}")
    t = Table()
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for lab, c in m["per_class"].items():
        t.add_row(lab, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"]))
    console.print(t)
    console.print(confusion_text(m["confusion_matrix"], m["labels"]), highlight=False, markup=False)
    if m.get("skipped_unknown_labels"):
        errors.print(f"warning: skipped rows with labels the checkpoint does not know: "
                     f"{counts_text(m['skipped_unknown_labels'])}", style="yellow", markup=False, highlight=False)
