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
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from emostore.extract.dialogue_input import TurnTokenizer
from emostore.finetune.data import FinetuneData, epoch_batches
from emostore.finetune.model import TextClassifier, autocast, parameter_groups
from emostore.finetune.state import load_state, save_state, save_tensors
from emostore.heads.evaluate import classification_metrics, regression_metrics

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
    #: float32, or bfloat16/float16 autocast (CUDA).
    precision: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def train_model(model: TextClassifier, data: FinetuneData, tokenizer: TurnTokenizer, train_rows: np.ndarray,
                config: FinetuneConfig, *, state_dir: Path, device: str, save_every: int = 0,
                progress: bool = False, log: Log = print, label: str = "") -> TrainResult:
    """Train ``model`` on ``train_rows``; keep the best epoch on the dev split. Resumes from
    ``state_dir`` when it holds a state; leaves the best weights in ``model``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    regression = data.target.regression
    dev_rows = data.rows("dev")
    lengths = np.array([len(t.input_ids) if t is not None else 0 for t in data.inputs])
    n_batches = math.ceil(len(train_rows) / config.batch_size)
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    model.to(device)
    # the fused kernel is several times faster on the CPU too (same update rule)
    optimizer = torch.optim.AdamW(parameter_groups(model, config.weight_decay), lr=config.lr,
                                  fused=device != "mps")
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup * total_steps), total_steps)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "float16" else None
    weights = None
    if config.class_weights and not regression:
        y = data.y[train_rows]
        present = np.unique(y)
        w = np.zeros(data.target.n_out, dtype=np.float32)
        w[present] = compute_class_weight("balanced", classes=present, y=y)
        weights = torch.from_numpy(w).to(device)
    loss_fn: nn.Module = nn.L1Loss() if regression else nn.CrossEntropyLoss(
        weight=weights, label_smoothing=config.label_smoothing)
    y_all = torch.from_numpy(data.y)

    counters = load_state(state_dir, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler)
    resumed = None
    if counters is not None:
        resumed = {"epoch": counters["epoch"] + 1, "batch": counters["batch"], "step": counters["global_step"]}
        log(f"{label}resuming from {state_dir}: epoch {min(counters['epoch'] + 1, config.epochs)} of "
            f"{config.epochs}, batch {counters['batch']} of {n_batches} (step {counters['global_step']} of "
            f"{total_steps})")
    else:
        counters = {"epoch": 0, "batch": 0, "global_step": 0, "history": [], "best": None, "best_epoch": 0,
                    "best_file": None, "loss_sum": 0.0, "loss_n": 0, "epoch_seconds": 0.0, "epoch_cpu": 0.0,
                    "seconds": 0.0}
    notes = [] if len(dev_rows) else [f"no labelled dev rows: the last of {config.epochs} epochs is kept"]

    def checkpoint() -> None:
        save_state(state_dir, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                   counters={k: v for k, v in counters.items() if k not in ("tensors", "optimizer", "scheduler",
                                                                           "scaler")})

    console = Console(stderr=True)
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        while counters["epoch"] < config.epochs:
            epoch = counters["epoch"]
            batches = epoch_batches(lengths, train_rows, config.batch_size, config.seed, epoch)
            task = bar.add_task(f"{label}epoch {epoch + 1}/{config.epochs}", total=len(batches),
                                completed=counters["batch"])
            model.train()
            started, cpu = time.perf_counter(), time.process_time()
            for b in range(counters["batch"], len(batches)):
                rows = batches[b]
                batch = {k: v.to(device) for k, v in tokenizer.collate([data.inputs[r] for r in rows]).items()}
                target = y_all[rows].to(device)
                with autocast(device, config.precision):
                    out = model(batch).float()
                loss = loss_fn(out[:, 0], target) if regression else loss_fn(out, target)
                (scaler.scale(loss / config.grad_accum) if scaler else loss / config.grad_accum).backward()
                counters["loss_sum"] += float(loss.item()) * len(rows)
                counters["loss_n"] += len(rows)
                last = b == len(batches) - 1
                if (b + 1) % config.grad_accum == 0 or last:
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    counters["global_step"] += 1
                    counters["batch"] = b + 1
                    if save_every and counters["global_step"] % save_every == 0 and not last:
                        counters["epoch_seconds"] += time.perf_counter() - started
                        counters["epoch_cpu"] = counters.get("epoch_cpu", 0.0) + time.process_time() - cpu
                        started, cpu = time.perf_counter(), time.process_time()
                        checkpoint()
                bar.update(task, advance=1, description=f"{label}epoch {epoch + 1}/{config.epochs} loss "
                                                        f"{counters['loss_sum'] / max(counters['loss_n'], 1):.4f}")
            bar.remove_task(task)
            seconds = counters["epoch_seconds"] + time.perf_counter() - started
            cpu_seconds = counters.get("epoch_cpu", 0.0) + time.process_time() - cpu
            # wall time, and CPU time of this process (all its threads): on a shared machine the second
            # says what the epoch costs, the first how long it took
            entry: dict[str, Any] = {"epoch": epoch + 1,
                                     "train_loss": counters["loss_sum"] / max(counters["loss_n"], 1),
                                     "train_seconds": round(seconds, 2), "train_cpu_seconds": round(cpu_seconds, 2)}
            mark = ""
            if len(dev_rows):
                dev = short_metrics(metrics_of(data, dev_rows, predict(model, data, tokenizer, dev_rows,
                                                                       device=device, precision=config.precision)))
                entry["dev"] = dev
                if better(data, dev, counters["best"]):
                    counters["best"], counters["best_epoch"], mark = dev, epoch + 1, " (best)"
            else:
                counters["best_epoch"], mark = epoch + 1, ""
            if counters["best_epoch"] == epoch + 1:
                name = f"best-{epoch + 1:03d}.safetensors"
                save_tensors(state_dir / name, model.state_dict())
                old, counters["best_file"] = counters["best_file"], name
            else:
                old = None
            counters["history"].append(entry)
            counters.update({"epoch": epoch + 1, "batch": 0, "loss_sum": 0.0, "loss_n": 0, "epoch_seconds": 0.0,
                             "epoch_cpu": 0.0, "seconds": counters["seconds"] + seconds})
            checkpoint()
            if old and old != counters["best_file"]:
                (state_dir / old).unlink(missing_ok=True)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in entry.get("dev", {}).items())
            log(f"{label}epoch {epoch + 1}/{config.epochs}: train loss {entry['train_loss']:.4f}"
                f"{', dev ' + shown if shown else ''}; {seconds / 60:.1f} min ({cpu_seconds / 60:.1f} min CPU){mark}")
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(state_dir / counters["best_file"])))
    model.eval()
    return TrainResult(counters["history"], counters["best_epoch"], counters["best"], counters["seconds"],
                       resumed, notes)
