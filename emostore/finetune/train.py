"""The fine-tuning loop: AdamW with linear warm-up and decay, length-bucketed batches, the best
epoch on dev weighted F1 (MAE for regression), and a resumable state at least once per epoch.

Resuming restores the weights, the AdamW moments, the scheduler and the RNG state, and each
epoch's batches follow from (seed, epoch), so a run killed and resumed ends with the same
weights as one never interrupted (on the CPU).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import Tensor, nn

from emostore.core.metrics import classification_metrics, regression_metrics
from emostore.core.progress import progress_bar
from emostore.core.runtime import autocast
from emostore.extract.dialogue_input import TurnTokenizer
from emostore.finetune.data import FinetuneData, epoch_batches
from emostore.finetune.model import TextClassifier, parameter_groups
from emostore.finetune.state import load_state, save_state, save_tensors

#: Rows per forward pass when evaluating.
EVAL_BATCH = 64
Log = Callable[[str], None]


@dataclass
class FinetuneConfig:
    """Everything that changes the trained weights (the device does not, within rounding)."""

    epochs: int = 4
    lr: float = 5e-5
    batch_size: int = 32
    grad_accum: int = 1
    class_weights: bool = False
    label_smoothing: float = 0.0
    weight_decay: float = 0.01
    #: Share of the optimiser steps spent warming the learning rate up from 0.
    warmup: float = 0.1
    dropout: float = 0.1
    seed: int = 0
    #: float32, or bfloat16/float16 autocast (float16 on CUDA only).
    precision: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Distillation:
    """How a student learns from a teacher (:mod:`emostore.finetune.teacher`): ``weight`` of the
    loss from the teacher's outputs (the rest from the gold labels), the softmax ``temperature``,
    and the teacher's outputs per table row."""

    temperature: float
    weight: float
    outputs: np.ndarray


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    best_epoch: int
    dev: dict[str, Any] | None
    seconds: float
    resumed: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def short_metrics(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("mae", "corr", "acc2") if m["task"] == "regression" else ("weighted_f1", "accuracy", "macro_f1")
    return {k: round(float(m[k]), 6) for k in keys}


@torch.no_grad()
def predict(model: TextClassifier, data: FinetuneData, tokenizer: TurnTokenizer, rows: np.ndarray, *,
            device: str, precision: str, embed: bool = False) -> np.ndarray:
    """Outputs (logits or score; or pooled vectors with ``embed``) of ``rows``, in their order."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(data.inputs[rows[i]].input_ids))  # type: ignore[union-attr]
    out: np.ndarray | None = None
    for s in range(0, len(order), EVAL_BATCH):
        idx = order[s:s + EVAL_BATCH]
        batch = {k: v.to(device) for k, v in tokenizer.collate([data.inputs[rows[i]] for i in idx]).items()}
        with autocast(device, precision):
            values = model.embed(batch) if embed else model(batch)
        values = values.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(rows), values.shape[1]), dtype=np.float32)
        out[idx] = values
    return out if out is not None else np.zeros((0, 1), dtype=np.float32)


def metrics_of(data: FinetuneData, rows: np.ndarray, outputs: np.ndarray) -> dict[str, Any]:
    """The ``evaluate --json`` metrics of outputs against the labels of ``rows``."""
    if data.target.regression:
        return regression_metrics(data.y[rows], outputs[:, 0])
    return classification_metrics(data.y[rows], outputs.argmax(1), data.target.labels or [])


def better(data: FinetuneData, new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    if old is None:
        return True
    if data.target.regression:
        return new["mae"] < old["mae"]
    return new["weighted_f1"] > old["weighted_f1"]


class Trainer:
    """One model's training run: the optimiser, the schedule, the loss and the resumable counters."""

    def __init__(self, model: TextClassifier, data: FinetuneData, tokenizer: TurnTokenizer, train_rows: np.ndarray,
                 config: FinetuneConfig, *, state_dir: Path, device: str, distill: Distillation | None = None,
                 max_batch_tokens: int = 0):
        self.model, self.data, self.tokenizer, self.config = model, data, tokenizer, config
        self.max_batch_tokens = max_batch_tokens
        self.train_rows, self.state_dir, self.device = train_rows, state_dir, device
        self.lengths = np.array([len(t.input_ids) if t is not None else 0 for t in data.inputs])
        self.n_batches = math.ceil(len(train_rows) / config.batch_size)
        self.total_steps = math.ceil(self.n_batches / config.grad_accum) * config.epochs
        model.to(device)
        # the fused kernel is several times faster on the CPU too (same update rule)
        self.optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                           fused=device != "mps")
        from transformers import get_linear_schedule_with_warmup

        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, round(config.warmup * self.total_steps),
                                                         self.total_steps)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "float16" else None
        self.loss = make_loss(data, train_rows, config, device, distill)
        self.counters: dict[str, Any] = {}

    def checkpoint(self) -> None:
        save_state(self.state_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                   scaler=self.scaler, counters={k: v for k, v in self.counters.items()
                                                 if k not in ("tensors", "optimizer", "scheduler", "scaler")})

    def resume(self, log: Log, label: str) -> dict[str, Any] | None:
        """Load the saved state, if any; returns where it resumes."""
        counters = load_state(self.state_dir, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                              scaler=self.scaler)
        if counters is None:
            self.counters = {"epoch": 0, "batch": 0, "global_step": 0, "history": [], "best": None, "best_epoch": 0,
                             "best_file": None, "loss_sum": 0.0, "loss_n": 0, "epoch_seconds": 0.0,
                             "epoch_cpu": 0.0, "seconds": 0.0}
            return None
        self.counters = counters
        log(f"{label}resuming from {self.state_dir}: epoch {min(counters['epoch'] + 1, self.config.epochs)} of "
            f"{self.config.epochs}, batch {counters['batch']} of {self.n_batches} (step {counters['global_step']} "
            f"of {self.total_steps})")
        return {"epoch": counters["epoch"] + 1, "batch": counters["batch"], "step": counters["global_step"]}

    def step(self) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def train_epoch(self, save_every: int, on_batch: Callable[[], None]) -> tuple[float, float]:
        """Train the current epoch from its saved batch on; returns (wall, CPU) seconds."""
        c, config = self.counters, self.config
        batches = epoch_batches(self.lengths, self.train_rows, config.batch_size, config.seed, c["epoch"])
        self.model.train()
        started, cpu = time.perf_counter(), time.process_time()
        for b in range(c["batch"], len(batches)):
            rows = batches[b]
            for part in token_parts(rows, self.lengths, self.max_batch_tokens):
                batch = {k: v.to(self.device) for k, v in self.tokenizer.collate(
                    [self.data.inputs[r] for r in part]).items()}
                with autocast(self.device, config.precision):
                    out = self.model(batch).float()
                loss = self.loss(out, part)
                share = len(part) / len(rows) / config.grad_accum  # the parts add up to the batch's mean loss
                (self.scaler.scale(loss * share) if self.scaler else loss * share).backward()
                c["loss_sum"] += float(loss.item()) * len(part)
                c["loss_n"] += len(part)
            last = b == len(batches) - 1
            if (b + 1) % config.grad_accum == 0 or last:
                self.step()
                c["global_step"] += 1
                c["batch"] = b + 1
                if save_every and c["global_step"] % save_every == 0 and not last:
                    c["epoch_seconds"] += time.perf_counter() - started
                    c["epoch_cpu"] = c.get("epoch_cpu", 0.0) + time.process_time() - cpu
                    started, cpu = time.perf_counter(), time.process_time()
                    self.checkpoint()
            on_batch()
        return (c["epoch_seconds"] + time.perf_counter() - started,
                c.get("epoch_cpu", 0.0) + time.process_time() - cpu)

    def end_epoch(self, seconds: float, cpu_seconds: float) -> tuple[dict[str, Any], str]:
        """Score the epoch on dev, keep its weights when best, save the state."""
        c, epoch = self.counters, self.counters["epoch"]
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": c["loss_sum"] / max(c["loss_n"], 1),
                                 "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2)}
        mark = ""
        dev_rows = self.data.rows("dev")
        if len(dev_rows):
            outputs = predict(self.model, self.data, self.tokenizer, dev_rows, device=self.device,
                              precision=self.config.precision)
            entry["dev"] = dev = short_metrics(metrics_of(self.data, dev_rows, outputs))
            if better(self.data, dev, c["best"]):
                c["best"], c["best_epoch"], mark = dev, epoch + 1, " (best)"
        else:
            c["best_epoch"] = epoch + 1
        old = None
        if c["best_epoch"] == epoch + 1:
            name = f"best-{epoch + 1:03d}.safetensors"
            save_tensors(self.state_dir / name, self.model.state_dict())
            old, c["best_file"] = c["best_file"], name
        c["history"].append(entry)
        c.update({"epoch": epoch + 1, "batch": 0, "loss_sum": 0.0, "loss_n": 0, "epoch_seconds": 0.0,
                  "epoch_cpu": 0.0, "seconds": c["seconds"] + seconds})
        self.checkpoint()
        if old and old != c["best_file"]:
            (self.state_dir / old).unlink(missing_ok=True)
        return entry, mark


def token_parts(rows: np.ndarray, lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """``rows`` (one batch) in parts of at most ``max_tokens`` padded tokens each (0: one part):
    long inputs are computed a few at a time, so that memory stays bounded (attention grows with
    the square of the length), and their gradients add up to the whole batch's."""
    if max_tokens <= 0 or len(rows) * int(lengths[rows].max()) <= max_tokens:
        return [rows]
    ordered = rows[np.argsort(lengths[rows], kind="stable")]
    parts, start = [], 0
    for end in range(1, len(ordered) + 1):
        if end - start > 1 and (end - start) * int(lengths[ordered[end - 1]]) > max_tokens:
            parts.append(ordered[start:end - 1])
            start = end - 1
    parts.append(ordered[start:])
    return parts


def make_loss(data: FinetuneData, train_rows: np.ndarray, config: FinetuneConfig, device: str,
              distill: Distillation | None) -> Callable[[Tensor, np.ndarray], Tensor]:
    """The loss of a batch's outputs: cross-entropy (L1 for regression) on the gold labels, mixed
    with the teacher's soft labels when distilling (KL divergence at a temperature, scaled by its
    square so that gradients keep their size)."""
    regression = data.target.regression
    weights = None
    if config.class_weights and not regression:
        y = data.y[train_rows]
        present = np.unique(y)
        w = np.zeros(data.target.n_out, dtype=np.float32)
        w[present] = compute_class_weight("balanced", classes=present, y=y)
        weights = torch.from_numpy(w).to(device)
    gold: nn.Module = nn.L1Loss() if regression else nn.CrossEntropyLoss(
        weight=weights, label_smoothing=config.label_smoothing)
    y_all = torch.from_numpy(data.y)
    soft = torch.from_numpy(distill.outputs) if distill is not None else None

    def loss(out: Tensor, rows: np.ndarray) -> Tensor:
        target = y_all[rows].to(out.device)
        value = gold(out[:, 0], target) if regression else gold(out, target)
        if distill is None or soft is None:
            return value
        teacher = soft[rows].to(out.device)
        if regression:
            taught = nn.functional.l1_loss(out[:, 0], teacher[:, 0])
        else:
            t = distill.temperature
            taught = nn.functional.kl_div(nn.functional.log_softmax(out / t, -1),
                                          nn.functional.log_softmax(teacher / t, -1),
                                          reduction="batchmean", log_target=True) * t * t
        return (1 - distill.weight) * value + distill.weight * taught

    return loss


def train_model(model: TextClassifier, data: FinetuneData, tokenizer: TurnTokenizer, train_rows: np.ndarray,
                config: FinetuneConfig, *, state_dir: Path, device: str, save_every: int = 0,
                progress: bool = False, log: Log = print, label: str = "",
                distill: Distillation | None = None, max_batch_tokens: int = 0) -> TrainResult:
    """Train ``model`` on ``train_rows``; keep the best epoch on the dev split. Resumes from
    ``state_dir`` when it holds a state; leaves the best weights in ``model``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(model, data, tokenizer, train_rows, config, state_dir=state_dir, device=device,
                      distill=distill, max_batch_tokens=max_batch_tokens)
    resumed = trainer.resume(log, label)
    c = trainer.counters
    notes = [] if len(data.rows("dev")) else [f"no labelled dev rows: the last of {config.epochs} epochs is kept"]
    with progress_bar(enabled=progress, transient=True, stderr=True) as bar:
        while c["epoch"] < config.epochs:
            title = f"{label}epoch {c['epoch'] + 1}/{config.epochs}"
            task = bar.add_task(title, total=trainer.n_batches, completed=c["batch"])

            def advance(task: Any = task, title: str = title) -> None:
                bar.update(task, advance=1, description=f"{title} loss {c['loss_sum'] / max(c['loss_n'], 1):.4f}")

            seconds, cpu_seconds = trainer.train_epoch(save_every, advance)
            bar.remove_task(task)
            entry, mark = trainer.end_epoch(seconds, cpu_seconds)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in entry.get("dev", {}).items())
            log(f"{title}: train loss {entry['train_loss']:.4f}{', dev ' + shown if shown else ''}; "
                f"{seconds / 60:.1f} min ({cpu_seconds / 60:.1f} min CPU){mark}")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(state_dir / c["best_file"])))
    model.eval()
    return TrainResult(c["history"], c["best_epoch"], c["best"], c["seconds"], resumed, notes)



