"""A grid of trainings: heads x feature set combinations x hyperparameter values x seeds.

Features are loaded once per combination (per worker on a cluster). Each run is trained on the
train split, selected on dev and scored on the chosen split; the summary gives mean and sample
standard deviation over seeds for every configuration. Runs are deterministic given their seed,
so a sweep on a cluster gives the same table as one here.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from emostore.core.progress import progress_bar
from emostore.errors import UserError
from emostore.heads.base import head_class, make_params
from emostore.heads.data import HeadData, load_data
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


@dataclass
class RunSpec:
    """One run of a sweep, as plain values (sent to cluster workers as is)."""

    index: int                   # place in the sweep's order
    features: list[str]
    head: str
    setting: dict[str, str]
    seed: int
    config: TrainConfig
    target: str = "emotion"
    split: str = "test"
    speaker_norm: bool = False
    frames: bool = False
    memory_budget: str | int | None = None
    #: Folder or URL to write the run's checkpoint under (None: not written).
    checkpoints: str | None = None

    @property
    def name(self) -> str:
        """The run's checkpoint folder name: head, features, setting and seed."""
        parts = [self.head, "+".join(f.replace("/", "-") for f in self.features),
                 *(f"{k}={v}" for k, v in sorted(self.setting.items())), f"seed{self.seed}"]
        return re.sub(r"[^A-Za-z0-9=.+_-]", "_", "_".join(parts))


def plan(heads: list[str], feature_combos: list[list[str]], seeds: int, grid: dict[str, list[str]],
         config: TrainConfig, **common: Any) -> list[RunSpec]:
    """Every run of the sweep in its order: per feature combination, heads x settings x seeds."""
    for h in heads:
        head_class(h)
    if seeds < 1:
        raise UserError("--seeds must be at least 1")
    runs = [(h, s, seed) for h in heads for s in head_settings(h, grid)
            for seed in range(config.seed, config.seed + seeds)]
    for h, s, _ in runs:  # fail on a bad parameter before training anything
        split_setting(h, s, config)
    frames = any(head_class(h).frames for h in heads)
    return [RunSpec(i * len(runs) + j, list(features), h, dict(s), seed, config, frames=frames, **common)
            for i, features in enumerate(feature_combos) for j, (h, s, seed) in enumerate(runs)]


def load_for(store: Store, spec: RunSpec) -> HeadData:
    return load_data(store, spec.features, spec.target, speaker_norm=spec.speaker_norm, frames=spec.frames,
                     memory_budget=spec.memory_budget)


def run_one(store: Store, data: HeadData, spec: RunSpec) -> dict[str, Any]:
    """Train and score one run; ``{"run": ...}``, or ``{"failure": ...}`` with its one-line error."""
    params, cfg = split_setting(spec.head, spec.setting, spec.config)
    try:
        fitted = fit(data, spec.head, params, replace(cfg, seed=spec.seed))
        ev = evaluate_data(fitted.model, data, spec.split)
        if spec.checkpoints:
            save_anywhere(fitted, data, store, spec.checkpoints, spec.name)
    except UserError as exc:
        return {"index": spec.index, "failure": {"head": spec.head, "features": data.feature_sets,
                                                 "setting": spec.setting, "seed": spec.seed, "error": str(exc)}}
    return {"index": spec.index, "run": {
        "head": spec.head, "features": data.feature_sets, "setting": spec.setting, "seed": spec.seed,
        "config_key": f"{spec.head}|{','.join(data.feature_sets)}|{sorted(spec.setting.items())}",
        "metrics": {k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))},
        "dev_score": fitted.dev_score, "best_epoch": fitted.best_epoch, "seconds": round(fitted.seconds, 2),
        "params": asdict(fitted.params)}}


def save_anywhere(fitted: Any, data: HeadData, store: Store, where: str, name: str) -> None:
    """Write the checkpoint to ``where/name``: a folder, or a URL (written here, then uploaded)."""
    from emostore.heads import checkpoint
    from emostore.store import Location

    loc = Location.parse(f"{where.rstrip('/')}/{name}")
    if loc.is_local:
        checkpoint.save(fitted, data, Path(loc.local_path), store=store, overwrite=True)  # type: ignore[arg-type]
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = checkpoint.save(fitted, data, Path(tmp) / name, store=store, overwrite=True)
        loc.fs.put(str(local), loc.root, recursive=True)


def sweep(store: Store, heads: list[str], feature_combos: list[list[str]], *, seeds: int = 5,
          target: str = "emotion", split: str = "test", grid: dict[str, list[str]] | None = None,
          config: TrainConfig | None = None, progress: bool = True, speaker_norm: bool = False,
          memory_budget: str | int | None = None, checkpoints: str | None = None,
          cluster: Any = None) -> SweepResult:
    """Train every combination and score each run on ``split``; on a Dask ``cluster`` (an address,
    ``local:N`` or a Client) each run is a task (see :mod:`emostore.heads.sweep_cluster`).

    A run that cannot be made (a frame head on feature sets without frames, an RBF SVM too big
    for memory, ...) is recorded with its one-line error and the sweep goes on. ``checkpoints``:
    a folder or URL where each run's checkpoint is written.
    """
    specs = plan(heads, feature_combos, seeds, grid or {}, config or TrainConfig(), target=target, split=split,
                 speaker_norm=speaker_norm, memory_budget=memory_budget, checkpoints=checkpoints)
    start = time.perf_counter()
    with progress_bar(enabled=progress) as bar:
        task = bar.add_task("sweep", total=len(specs))
        if cluster is not None:
            from emostore.heads.sweep_cluster import run_on_cluster

            outcomes = run_on_cluster(cluster, store, specs, lambda: bar.advance(task), quiet=not progress)
        else:
            outcomes, data, loaded = [], None, None
            for spec in specs:
                if loaded != spec.features:
                    data, loaded = load_for(store, spec), spec.features
                bar.update(task, description=f"{spec.head} {','.join(spec.features)} seed {spec.seed}")
                outcomes.append(run_one(store, data, spec))  # type: ignore[arg-type]
                bar.advance(task)
    result = SweepResult(split, "regression" if target_is_regression(store, target) else "classification")
    for outcome in sorted(outcomes, key=lambda o: o["index"]):
        if "run" in outcome:
            result.runs.append(outcome["run"])
        else:
            result.failures.append(outcome["failure"])
    result.seconds = time.perf_counter() - start
    return result


def target_is_regression(store: Store, target: str) -> bool:
    from emostore.heads.table_columns import read_split, read_target

    return read_target(store, read_split(store), target)[0].regression

