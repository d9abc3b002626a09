"""The one training loop for every head: AdamW, early stopping on the dev split, fixed seeds."""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score, mean_absolute_error
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor, nn

from emostore.core.progress import progress_bar
from emostore.core.runtime import cpu_threads, resolve_device
from emostore.errors import UserError
from emostore.heads.base import Head, HeadParams, build_head, head_class, make_params
from emostore.heads.config import TrainConfig
from emostore.heads.data import HeadData
from emostore.heads.memory import gib

#: Rows per forward pass when predicting.
PREDICT_BATCH = 2048
#: Most frames (rows x padded length) per forward pass when a frame head predicts.
PREDICT_FRAMES = 1 << 18


@dataclass
class FitResult:
    model: Head
    head: str
    params: HeadParams
    config: TrainConfig
    metric: str                  # dev metric used for early stopping
    best_epoch: int
    epochs_run: int
    dev_score: float | None
    seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: What a head fitted in one go settled on (see :meth:`Head.fitted_with`); empty for heads trained by epochs.
    fitted_with: str = ""

    def summary(self) -> dict[str, Any]:
        return {"head": self.head, "params": asdict(self.params), "config": asdict(self.config),
                "metric": self.metric, "best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                "dev_score": self.dev_score, "seconds": round(self.seconds, 2), "device": self.device,
                "notes": self.notes, "fitted_with": self.fitted_with}



def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def drop_modalities(mask: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """Hide each present modality with probability ``p``, always keeping at least one of them."""
    if p <= 0 or mask.shape[-1] < 2:
        return mask
    rand = torch.rand(mask.shape, generator=generator, device="cpu").to(mask.device)
    kept = mask & (rand >= p)
    keep_one = torch.nn.functional.one_hot((rand + 2 * mask).argmax(-1), mask.shape[-1]).bool() & mask
    return torch.where(kept.any(-1, keepdim=True), kept, keep_one)


# ----- batches ---------------------------------------------------------------------------------
def dialogue_index(dialogues: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """``[n, T]`` row indices of each dialogue (-1 padded) and ``[n]`` lengths."""
    lengths = torch.tensor([len(d) for d in dialogues], dtype=torch.long)
    index = torch.full((len(dialogues), int(lengths.max()) if len(dialogues) else 0), -1, dtype=torch.long)
    for i, d in enumerate(dialogues):
        index[i, : len(d)] = torch.as_tensor(np.asarray(d, dtype=np.int64).copy())
    return index, lengths


def forward(model: Head, data: HeadData, idx: Tensor, mask: Tensor | None = None) -> Tensor:
    """Outputs for rows ``idx``: ``[B]`` for utterance heads, ``[B, T]`` (-1 padded) for sequence heads.

    Frame heads also get the padded frames of the rows (cropped to the head's ``max_frames``: at
    random while training, in the middle otherwise).
    """
    device = data.mask.device
    valid = idx >= 0
    safe = idx.clamp(min=0).to(device)
    xs = [x[safe] for x in data.xs]
    m = data.mask[safe] if mask is None else mask
    if model.sequence:
        return model(xs, m & valid.to(device).unsqueeze(-1), valid.to(device),
                     torch.where(valid.to(device), data.speakers[safe], -1))
    if model.frames:
        crop = int(getattr(model.params, "max_frames", 0) or 0)
        frames = [None if f is None else f.batch(safe, crop, random_crop=model.training) for f in data.frames]
        return model(xs, m, frames)
    return model(xs, m)


def _frame_batches(data: HeadData, rows: np.ndarray, crop: int) -> list[np.ndarray]:
    """``rows`` sorted by frame length and cut into batches of at most ``PREDICT_FRAMES`` padded frames."""
    lengths = data.frame_lengths().numpy()[rows]
    if crop > 0:
        lengths = np.minimum(lengths, crop)
    order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    current: list[int] = []
    for j in order:  # ascending lengths: the newest row is the widest of its batch
        width = max(int(lengths[j]), 1)
        if current and (len(current) >= PREDICT_BATCH or (len(current) + 1) * width > PREDICT_FRAMES):
            batches.append(np.asarray(current))
            current = []
        current.append(int(j))
    if current:
        batches.append(np.asarray(current))
    return batches


@torch.no_grad()
def predict_rows(model: Head, data: HeadData, rows: np.ndarray) -> Tensor:
    """Raw outputs (logits, or the score) for ``rows``, ``[len(rows), n_out]`` on the CPU; a window
    of rows at a time when the data streams."""
    if not data.streamed:
        return _predict_window(model, data, rows)
    out = torch.zeros(len(rows), model.n_out)
    device = data.mask.device
    for window, local, positions in data.prediction_windows(rows, model.sequence):
        out[torch.as_tensor(positions)] = _predict_window(model, window.to(device), local)
    return out


def _predict_window(model: Head, data: HeadData, rows: np.ndarray) -> Tensor:
    model.eval()
    n_out = model.n_out
    if model.frames:
        out = torch.zeros(len(rows), n_out)
        for batch in _frame_batches(data, rows, int(getattr(model.params, "max_frames", 0) or 0)):
            out[torch.as_tensor(batch)] = forward(model, data, torch.as_tensor(rows[batch], dtype=torch.long)).cpu()
        return out
    if not model.sequence:
        parts = [forward(model, data, torch.as_tensor(rows[i:i + PREDICT_BATCH], dtype=torch.long)).cpu()
                 for i in range(0, len(rows), PREDICT_BATCH)]
        return torch.cat(parts) if parts else torch.zeros(0, n_out)
    wanted = np.zeros(len(data), dtype=bool)
    wanted[rows] = True
    dialogues = [d for d in data.dialogues if wanted[d].any()]
    out = torch.full((len(data), n_out), torch.nan)
    per_batch = max(1, PREDICT_BATCH // max(1, max((len(d) for d in dialogues), default=1)))
    for i in range(0, len(dialogues), per_batch):
        index, _ = dialogue_index(dialogues[i:i + per_batch])
        result = forward(model, data, index).cpu()
        valid = index >= 0
        out[index[valid]] = result[valid]
    return out[torch.as_tensor(rows, dtype=torch.long)]


def score(data: HeadData, rows: np.ndarray, outputs: Tensor) -> float:
    """The early-stopping score: weighted F1 (higher is better) or MAE (lower is better)."""
    y = data.y.cpu()[torch.as_tensor(rows, dtype=torch.long)]
    if data.target.regression:
        return float(mean_absolute_error(y.numpy(), outputs[:, 0].numpy()))
    return float(f1_score(y.numpy(), outputs.argmax(1).numpy(), average="weighted", zero_division=0))


def _batches(units: list[Any], rng: np.random.Generator, size: int, sequence: bool,
             lengths: np.ndarray | None = None) -> Iterator[Tensor]:
    """Shuffled batches of row indices: ``[B]`` rows, or ``[B, T]`` (-1 padded) dialogues.

    Dialogues are drawn in pools of 8 batches and sorted by length within a pool, so a batch
    holds dialogues of similar length and little padding; so are rows when their frame
    ``lengths`` are given (frame heads).
    """
    order = rng.permutation(len(units))
    if not sequence and lengths is not None:
        batches = []
        for p in range(0, len(order), 8 * size):
            pool = sorted(order[p:p + 8 * size], key=lambda j: lengths[units[j]])
            batches += [pool[i:i + size] for i in range(0, len(pool), size)]
        for b in rng.permutation(len(batches)):
            yield torch.as_tensor(np.asarray([units[j] for j in batches[b]]), dtype=torch.long)
        return
    if not sequence:
        rows = np.asarray(units, dtype=np.int64)
        for i in range(0, len(order), size):
            yield torch.as_tensor(rows[order[i:i + size]], dtype=torch.long)
        return
    batches = []
    for p in range(0, len(order), 8 * size):
        pool = sorted(order[p:p + 8 * size], key=lambda j: len(units[j]))
        batches += [pool[i:i + size] for i in range(0, len(pool), size)]
    for b in rng.permutation(len(batches)):
        yield dialogue_index([units[j] for j in batches[b]])[0]


# ----- training --------------------------------------------------------------------------------
def class_weight_tensor(data: HeadData, rows: np.ndarray) -> Tensor:
    y = data.y.cpu().numpy()[rows]
    present = np.unique(y)
    w = np.zeros(data.target.n_out, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.from_numpy(w)


def fit(data: HeadData, head: str, params: HeadParams | dict[str, Any] | None = None,
        config: TrainConfig | None = None, *, progress: bool = False) -> FitResult:
    """Train ``head`` on the train split of ``data``; keep the epoch with the best dev score."""
    config = config or TrainConfig()
    with cpu_threads(config.threads if resolve_device(config.device) == "cpu" else None):
        return _fit(data, head, params, config, progress)


def _fit(data: HeadData, head: str, params: HeadParams | dict[str, Any] | None, config: TrainConfig,
         progress: bool) -> FitResult:
    if not isinstance(params, HeadParams):
        params = make_params(head, params)
    start = time.perf_counter()
    device = resolve_device(config.device)
    seed_everything(config.seed)
    data.to(device)
    train_rows, dev_rows = data.rows("train"), data.rows("dev")
    _check_trainable(data, head, train_rows)
    model = build_head(head, data.dims, data.target.n_out, params, frame_dims=data.frame_dims,
                       layers=data.layers or None).to(device)
    regression = data.target.regression
    metric = "dev_mae" if regression else "dev_weighted_f1"
    weights = None if regression or not config.class_weights else class_weight_tensor(data, train_rows)
    notes = _notes(data, config, dev_rows)

    if not model.trainable:
        from emostore.heads.at_once import fit_at_once

        history = fit_at_once(model, data, train_rows, weights, config, notes)
        dev = score(data, dev_rows, predict_rows(model, data, dev_rows)) if len(dev_rows) else None
        history = [{"epoch": 0, **history, **({metric: dev} if dev is not None else {})}]
        return FitResult(model.eval(), head, params, config, metric, 0, 0, dev, time.perf_counter() - start,
                         device, history, notes, fitted_with=model.fitted_with())

    trainer = _GradientSteps(model, data, config, weights, device, train_rows)
    better = (lambda a, b: a < b) if regression else (lambda a, b: a > b)
    n_targets = max(len(train_rows), 1)
    best_score: float | None = None
    best_state, best_epoch, history = copy.deepcopy(model.state_dict()), 0, []

    with progress_bar(enabled=progress, transient=True, eta=False) as bar:
        task = bar.add_task(f"train {head}", total=config.epochs)
        epoch = 0
        for epoch in range(1, config.epochs + 1):
            model.train()
            began = time.perf_counter()
            loss, seen = trainer.epoch()
            entry = {"epoch": epoch, "train_loss": loss / n_targets, "rows_seen": seen,
                     "train_seconds": round(time.perf_counter() - began, 3)}
            if len(dev_rows):
                dev = score(data, dev_rows, predict_rows(trainer.kept, data, dev_rows))
                entry[metric] = dev
                if best_score is None or better(dev, best_score):
                    best_score, best_epoch = dev, epoch
                    best_state = copy.deepcopy(trainer.kept.state_dict())
            else:
                best_epoch, best_state = epoch, copy.deepcopy(trainer.kept.state_dict())
            entry["seconds"] = round(time.perf_counter() - began, 3)
            history.append(entry)
            shown = f" {metric} {entry.get(metric, float('nan')):.4f} (best {best_score or 0:.4f} @ {best_epoch})"
            bar.update(task, advance=1, description=f"train {head}{shown if len(dev_rows) else ''}")
            if len(dev_rows) and epoch - best_epoch >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, head, params, config, metric, best_epoch, epoch, best_score,
                     time.perf_counter() - start, device, history, notes)


def _check_trainable(data: HeadData, head: str, train_rows: np.ndarray) -> None:
    if not len(train_rows):
        raise UserError("no labelled rows in the train split: nothing to train on")
    if head_class(head).frames and not any(f is not None for f in data.frames):
        raise UserError(f"head {head!r} reads frame sequences, but none of {', '.join(data.feature_sets)} keeps "
                        "them; add a feature set with frames (extract audio --feature-set egemaps-lld, extract "
                        "audio --encoder ssl --frames, extract visual)")


def _notes(data: HeadData, config: TrainConfig, dev_rows: np.ndarray) -> list[str]:
    notes: list[str] = []
    if not len(dev_rows):
        notes.append(f"no labelled dev rows: trained {config.epochs} epochs without early stopping")
    if data.streamed:
        notes.append(f"features streamed from the store: {gib(data.reader.row_bytes * len(data))} of vectors, "  # type: ignore[union-attr]
                     f"over the memory budget of {gib(data.budget)}")
    return notes


class _GradientSteps:
    """The loss, optimiser, optional weight average and batch order of a trainable head: one
    :meth:`epoch` at a time, over the training units (rows, or dialogues for sequence heads)."""

    def __init__(self, model: Head, data: HeadData, config: TrainConfig, weights: Tensor | None, device: str,
                 train_rows: np.ndarray):
        self.model, self.data, self.config, self.device = model, data, config, device
        self.regression = data.target.regression
        self.loss_fn: nn.Module = nn.L1Loss() if self.regression else nn.CrossEntropyLoss(
            weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing)
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.averaged = (torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
            if config.ema > 0 else None)
        #: the model whose weights are scored and kept: the average when there is one
        self.kept: Head = self.averaged.module if self.averaged is not None else model  # type: ignore[assignment]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        in_train = np.zeros(len(data), dtype=bool)
        in_train[train_rows] = True
        self.units: Any = [d for d in data.dialogues if in_train[d].any()] if model.sequence else train_rows
        self.batch = config.batch(model.sequence)
        self.frame_lengths = data.frame_lengths().numpy() if model.frames else None

    def step(self, window: HeadData, targets: Tensor, idx: Tensor) -> tuple[float, int]:
        """One optimiser step on the batch ``idx`` of ``window``; the summed loss of its targets, and
        how many they were."""
        model = self.model
        safe = idx.clamp(min=0)
        mask = drop_modalities(window.mask[safe], self.config.modality_dropout, self.generator)
        out = forward(model, window, idx, mask)
        target = (idx >= 0) & targets[safe]
        pred, y = out[target], window.y[safe][target]
        loss = self.loss_fn(pred[:, 0], y) if self.regression else self.loss_fn(pred, y)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        self.optimiser.step()
        if self.averaged is not None:
            self.averaged.update_parameters(model)
        return loss.item() * len(y), len(y)

    def epoch(self) -> tuple[float, int]:
        """One pass over the training units, a window at a time: summed loss, targets seen."""
        loss, seen = 0.0, 0
        for window, local in self.data.windows(self.units, self.rng):
            window.to(self.device)
            targets = torch.from_numpy(window.split == "train").to(self.device) & window.has_label
            for idx in _batches(local, self.rng, self.batch, self.model.sequence, self.frame_lengths):
                batch_loss, n = self.step(window, targets, idx.to(self.device))
                loss, seen = loss + batch_loss, seen + n
        return loss, seen
