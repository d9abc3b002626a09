"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``checkpoint.json``.

The JSON holds the head and its hyperparameters, the feature sets with their dims and config
hashes, the target and label map, the normalisation statistics and how training went. Loading
reads only these two files (safetensors and JSON, never pickle) and refuses a store whose
feature sets were computed with another configuration.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from emostore import __version__
from emostore.core.clock import now
from emostore.errors import UserError
from emostore.heads import manifest
from emostore.heads.base import Head, build_head, make_params
from emostore.heads.data import HeadData, Target, load_data
from emostore.heads.train import FitResult
from emostore.store import Store

BadCheckpoint = manifest.BadCheckpoint
FORMAT = "emostore-head"
FORMAT_VERSION = 1
WEIGHTS, META = "model.safetensors", "checkpoint.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode, CPU) and its description."""

    path: Path
    model: Head
    meta: dict[str, Any]

    @property
    def head(self) -> str:
        return str(self.meta["head"])

    @property
    def feature_sets(self) -> list[str]:
        return [f["name"] for f in self.meta["feature_sets"]]

    @property
    def target(self) -> Target:
        t = self.meta["target"]
        return Target(t["name"], t["column"], t["labels"])

    @property
    def norm(self) -> dict[str, dict[str, list[float]]]:
        return self.meta["normalisation"]

    @property
    def store_address(self) -> str | None:
        """The training store: where it was, or, when the checkpoint and its store were moved
        together, where it is now (the path recorded relative to the checkpoint)."""
        info = self.meta.get("store") or {}
        path = info.get("path")
        relative = info.get("relative_path")
        if path and ("://" in str(path) or Path(path, "zarr.json").is_file()):
            return str(path)
        if relative and (self.path / relative / "zarr.json").is_file():
            return str((self.path / relative).resolve())
        return str(path) if path else None

    @property
    def frames(self) -> bool:
        """Whether the head reads frame sequences."""
        return bool(self.model.frames)

    def load_data(self, store: Store) -> HeadData:
        """The rows of ``store`` as this checkpoint was trained on them (its label map, statistics,
        per-speaker normalisation and frames)."""
        return load_data(store, self.feature_sets, self.target, norm=self.norm,
                         speaker_norm=bool(self.meta.get("speaker_norm")), frames=self.frames)

    def check_store(self, store: Store) -> None:
        """Refuse a store that lacks a feature set or holds it with another configuration."""
        for f in self.meta["feature_sets"]:
            name = f["name"]
            if not store.has_feature_set(name):
                raise UserError(f"{store.url} has no feature set {name!r}, which checkpoint {self.path} needs; "
                                f"run `emostore extract` with the same settings first")
            fs = store.feature_set(name)
            if fs.config_hash != f["config_hash"] or fs.dim != f["dim"]:
                raise UserError(
                    f"checkpoint {self.path} was trained on {name!r} with config {f['config_hash']} "
                    f"(dim {f['dim']}), but {store.url} holds it with config {fs.config_hash} (dim {fs.dim}); "
                    f"re-extract {name} with the checkpoint's settings ({f.get('config')}) or retrain")


def check_writable(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds a checkpoint to replace; refuse anything else that is not empty."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return False
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if not (out / META).is_file():
        raise UserError(f"{out} exists and is not an emostore checkpoint; refusing to delete it")
    return True


def save(result: FitResult, data: HeadData, out: Path, *, store: Store | None = None,
         overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``result``'s model and everything needed to use it again to directory ``out``."""
    out = Path(out)
    if check_writable(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    configs = {}
    if store is not None:
        configs = {n: store.feature_set(n).config for n in data.feature_sets}
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "emostore_version": __version__, "created": now(),
        "head": result.head, "params": asdict(result.params),
        "feature_sets": [{"name": n, "dim": d, "config_hash": h, "config": configs.get(n),
                          **({"frame_dim": fd} if fd is not None and result.model.frames else {}),
                          **({"layers": n_layers} if n_layers > 1 else {})}
                         for n, d, h, fd, n_layers in zip(data.feature_sets, data.dims, data.config_hashes,
                                                          data.frame_dims, data.layers or [1] * len(data.dims))],
        "target": data.target.to_dict(),
        "normalisation": data.norm,
        "training": {**result.summary(), "history": result.history},
        "store": {"path": _store_address(store), "dataset": store.dataset,
                  **({"relative_path": os.path.relpath(store.path.resolve(), out.resolve())}
                     if store.location.is_local else {})} if store is not None else None,
        **(extra or {}),
    }
    save_file(state, str(out / WEIGHTS), metadata={"format": FORMAT, "head": result.head})
    (out / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def _store_address(store: Store) -> str:
    """Where the training store is, as something `predict` can open from any directory."""
    return str(store.path.resolve()) if store.location.is_local else store.url


def load(path: Path, store: Store | None = None) -> Checkpoint:
    """Read a checkpoint directory; with ``store``, also check that its feature sets match."""
    path = Path(path)
    if not (path / META).is_file() or not (path / WEIGHTS).is_file():
        raise UserError(f"{path} is not an emostore checkpoint (needs {META} and {WEIGHTS}); "
                        "make one with `emostore train`")
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadCheckpoint(f"{path / META}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise BadCheckpoint(f"{path / META}: not a checkpoint this emostore version can read (format {got!r})")
    m = manifest.check(path, meta)
    try:
        model = build_head(m.head, [f.dim for f in m.feature_sets], m.n_out, make_params(m.head, m.params),
                           frame_dims=[f.frame_dim for f in m.feature_sets],
                           layers=[f.layers for f in m.feature_sets])
    except UserError as exc:
        raise BadCheckpoint(f"{path / META}: {exc}") from None
    try:
        weights = load_file(str(path / WEIGHTS))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own errors for a damaged file)
        raise BadCheckpoint(f"{path / WEIGHTS}: cannot be read ({type(exc).__name__}: {str(exc)[:80]}); "
                            "retrain it or restore the folder") from None
    try:
        model.load_weights(weights)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BadCheckpoint(f"{path / WEIGHTS}: the weights do not fit the head checkpoint.json describes "
                            f"({first}); retrain it or restore the folder") from None
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise BadCheckpoint(f"{path / WEIGHTS}: holds weights that are not finite (NaN or inf); retrain it")
    ckpt = Checkpoint(path, model.eval(), meta)
    if store is not None:
        ckpt.check_store(store)
    return ckpt
