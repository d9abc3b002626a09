"""A grid of trainings: heads x feature set combinations x hyperparameter values x seeds.

Features are loaded once per combination. Each run is trained on the train split, selected on
dev and scored on the chosen split; the summary gives mean and sample standard deviation over
seeds for every configuration.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from emostore.core.progress import progress_bar
from emostore.errors import UserError
from emostore.heads.base import head_class, make_params
from emostore.heads.data import load_data
from emostore.heads.evaluate import evaluate_data
from emostore.heads.train import TrainConfig, fit
from emostore.store import Store

CLASSIFICATION_KEYS = ("weighted_f1", "accuracy", "macro_f1")
REGRESSION_KEYS = ("mae", "corr", "acc2", "acc7", "f1")


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """``["lr=1e-3,3e-4", "knn.k=5,20"]`` -> ``{"lr": [...], "knn.k": [...]}``."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise UserError(f"--param expects KEY=V1[,V2...], got {item!r}")
        grid[key.strip().replace("-", "_")] = [v.strip() for v in values.split(",") if v.strip()]
    return grid


def split_setting(head: str, setting: dict[str, str], base: TrainConfig) -> tuple[dict[str, str], TrainConfig]:
    """Split one grid point into the head's parameters and the training configuration.

    ``name.key`` applies to head ``name`` only; a plain key goes to the training configuration
    when it is one of its fields, else to the head (which must have it).
    """
    config_fields = {f.name: f for f in fields(TrainConfig)}
    params: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for key, value in setting.items():
        if "." in key:
            target, _, key = key.partition(".")
            if target != head:
                continue
            params[key] = value
        elif key in config_fields:
            default = getattr(base, key)
            kind = type(default) if default is not None else int
            try:
                changes[key] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
            except ValueError:
                raise UserError(f"--param {key}: cannot read {value!r} as {kind.__name__}") from None
        else:
            params[key] = value
    make_params(head, params)  # validates names and values early
    return params, replace(base, **changes)


def head_settings(head: str, grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """The grid points that apply to ``head`` (axes named for another head are left out)."""
    axes = {k: v for k, v in grid.items() if "." not in k or k.split(".", 1)[0] == head}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


@dataclass
class SweepResult:
    split: str
    task: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: Runs that could not be made, with their one-line error.
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def keys(self) -> tuple[str, ...]:
        return REGRESSION_KEYS if self.task == "regression" else CLASSIFICATION_KEYS

    def summary(self) -> list[dict[str, Any]]:
        """Mean and sample standard deviation (ddof=1) over seeds, per configuration."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for run in self.runs:
            groups.setdefault(run["config_key"], []).append(run)
        out = []
        for runs in groups.values():
            row: dict[str, Any] = {"head": runs[0]["head"], "features": runs[0]["features"],
                                   "setting": runs[0]["setting"], "seeds": len(runs)}
            for key in self.keys + ("seconds",):
                values = np.array([r["metrics"][key] if key != "seconds" else r["seconds"] for r in runs], dtype=float)
                row[key] = {"mean": float(values.mean()),
                            "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"split": self.split, "task": self.task, "seconds": round(self.seconds, 2),
                "summary": self.summary(), "runs": self.runs, "failures": self.failures}


def sweep(store: Store, heads: list[str], feature_combos: list[list[str]], *, seeds: int = 5,
          target: str = "emotion", split: str = "test", grid: dict[str, list[str]] | None = None,
          config: TrainConfig | None = None, progress: bool = True, speaker_norm: bool = False) -> SweepResult:
    """Train every combination and score each run on ``split``.

    A run that cannot be made (a frame head on feature sets without frames, an RBF SVM too big
    for memory, ...) is recorded with its one-line error and the sweep goes on.
    """
    config = config or TrainConfig()
    for h in heads:
        head_class(h)
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    grid = grid or {}
    runs = [(h, s, seed) for h in heads for s in head_settings(h, grid)
            for seed in range(config.seed, config.seed + seeds)]
    for h, s, _ in runs:  # fail on a bad parameter before training anything
        split_setting(h, s, config)
    start = time.perf_counter()
    result: SweepResult | None = None
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("sweep", total=len(runs) * len(feature_combos))
        frames = any(head_class(h).frames for h in heads)
        for features in feature_combos:
            data = load_data(store, features, target, speaker_norm=speaker_norm, frames=frames)
            if result is None:
                result = SweepResult(split, "regression" if data.target.regression else "classification")
            for h, s, seed in runs:
                params, cfg = split_setting(h, s, config)
                bar.update(task, description=f"{h} {','.join(data.feature_sets)} seed {seed}")
                shown = dict(s)
                try:
                    fitted = fit(data, h, params, replace(cfg, seed=seed))
                    ev = evaluate_data(fitted.model, data, split)
                except UserError as exc:
                    result.failures.append({"head": h, "features": data.feature_sets, "setting": shown,
                                            "seed": seed, "error": str(exc)})
                    bar.advance(task)
                    continue
                result.runs.append({
                    "head": h, "features": data.feature_sets, "setting": shown, "seed": seed,
                    "config_key": f"{h}|{','.join(data.feature_sets)}|{sorted(shown.items())}",
                    "metrics": {k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))},
                    "dev_score": fitted.dev_score,
                    "best_epoch": fitted.best_epoch, "seconds": round(fitted.seconds, 2),
                    "params": asdict(fitted.params),
                })
                bar.advance(task)
    assert result is not None
    result.seconds = time.perf_counter() - start
    return result
