"""Checkpoints: a directory with ``model.safetensors`` (weights) and ``checkpoint.json``.

The JSON holds the head and its hyperparameters, the feature sets with their dims and config
hashes, the target and label map, the normalisation statistics and how training went. Loading
reads only these two files (safetensors and JSON, never pickle) and refuses a store whose
feature sets were computed with another configuration.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from emostore import __version__
from emostore.errors import UserError
from emostore.heads.base import Head, build_head, make_params
from emostore.heads.data import HeadData, Target, load_data
from emostore.heads.train import FitResult
from emostore.store import Store
from emostore.store.feature_set import now

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
    def frames(self) -> bool:
        """Whether the head reads frame sequences."""
        return bool(self.model.frames)

    def load_data(self, store: Store, memory_budget: str | int | None = None) -> HeadData:
        """The rows of ``store`` as this checkpoint was trained on them (its label map, statistics,
        per-speaker normalisation and frames), streamed beyond ``memory_budget``."""
        return load_data(store, self.feature_sets, self.target, norm=self.norm,
                         speaker_norm=bool(self.meta.get("speaker_norm")), frames=self.frames,
                         memory_budget=memory_budget)

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
        "store": {"path": _store_address(store), "dataset": store.dataset} if store is not None else None,
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
    except json.JSONDecodeError as exc:
        raise UserError(f"{path / META}: not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path / META}: not a checkpoint this emostore version can read "
                        f"(format {meta.get('format')!r} v{meta.get('format_version')})")
    t = meta["target"]
    n_out = 1 if t["labels"] is None else len(t["labels"])
    fsets = meta["feature_sets"]
    model = build_head(meta["head"], [f["dim"] for f in fsets], n_out, make_params(meta["head"], meta["params"]),
                       frame_dims=[f.get("frame_dim") for f in fsets], layers=[int(f.get("layers", 1)) for f in fsets])
    model.load_weights(load_file(str(path / WEIGHTS)))
    ckpt = Checkpoint(path, model.eval(), meta)
    if store is not None:
        ckpt.check_store(store)
    return ckpt
