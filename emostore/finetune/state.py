"""The resumable training state: safetensors for every tensor (weights, AdamW moments, RNG
states), JSON for everything else (counters, history, scheduler, optimizer settings).

``state.json`` is the commit point: it is replaced atomically after the tensors it names are
on disk, so a process killed at any moment leaves either the previous state or the new one.
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"
RUN = "run.json"


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """``save_file`` to a temp name, then rename (own copies: no shared storage)."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict())


def save_state(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: Any, counters: dict[str, Any]) -> None:
    """Write the whole training state; ``counters`` (JSON) say where training stands."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name = f"state-{int(counters['global_step']):08d}-{int(counters['epoch']):03d}.safetensors"
    save_tensors(directory / name, tensors)
    previous = read_json(directory / STATE).get("tensors") if (directory / STATE).is_file() else None
    write_json(directory / STATE, {**counters, "tensors": name, "optimizer": {
        "param_groups": opt["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None})
    if previous and previous != name:
        (directory / previous).unlink(missing_ok=True)


def load_state(directory: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
               scaler: Any) -> dict[str, Any] | None:
    """Restore what :func:`save_state` wrote (None when there is no state); returns the counters."""
    if not (directory / STATE).is_file():
        return None
    meta = read_json(directory / STATE)
    tensors = load_file(str(directory / meta["tensors"]))
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return meta


def cleanup(directory: Path) -> None:
    """Remove the training state once the model is exported (keeps ``run.json``)."""
    if not directory.is_dir():
        return
    for p in directory.iterdir():
        if p.name != RUN:
            p.unlink(missing_ok=True)
