"""``checkpoint.json`` as a typed manifest, checked when a checkpoint is loaded (not when the
first request arrives): every key present with its type, dimensions that agree, labels, and
normalisation vectors of the right length, finite, with a standard deviation above zero.
A checkpoint that fails is refused in one line naming the file and what is wrong."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emostore.errors import UserError


class BadCheckpoint(UserError):
    """A checkpoint whose files are missing, damaged or inconsistent."""


@dataclass(frozen=True)
class FeatureEntry:
    name: str
    dim: int
    config_hash: str
    frame_dim: int | None
    layers: int


@dataclass(frozen=True)
class Manifest:
    head: str
    params: dict[str, Any]
    feature_sets: list[FeatureEntry]
    target: dict[str, Any]
    normalisation: dict[str, dict[str, list[float]]]

    @property
    def n_out(self) -> int:
        labels = self.target["labels"]
        return 1 if labels is None else len(labels)


def _need(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in meta:
        raise ValueError(f"{where}: {key!r} is missing")
    value = meta[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ValueError(f"{where}: {key!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def _vector(stats: dict[str, Any], key: str, length: int, where: str, *, positive: bool = False) -> None:
    values = stats.get(key)
    if not isinstance(values, list) or len(values) != length:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise ValueError(f"{where}: normalisation {key!r} has {got} values, the feature set {length}")
    for i, v in enumerate(values):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{where}: normalisation {key!r} value {i} is not a finite number ({v!r})")
        if positive and v <= 0:
            raise ValueError(f"{where}: normalisation {key!r} value {i} is {v}; a standard deviation must be above 0")


def _feature(entry: Any, i: int) -> FeatureEntry:
    where = f"feature_sets[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} should be an object")
    dim = _need(entry, "dim", int, where)
    if dim <= 0:
        raise ValueError(f"{where}: dim must be above 0, got {dim}")
    frame_dim = entry.get("frame_dim")
    if frame_dim is not None and (not isinstance(frame_dim, int) or frame_dim <= 0):
        raise ValueError(f"{where}: frame_dim must be a positive integer, got {frame_dim!r}")
    layers = entry.get("layers", 1)
    if not isinstance(layers, int) or layers < 1 or dim % layers:
        raise ValueError(f"{where}: layers {layers!r} does not divide dim {dim}")
    return FeatureEntry(_need(entry, "name", str, where), dim, _need(entry, "config_hash", str, where), frame_dim,
                        layers)


def parse(meta: Any) -> Manifest:
    """The manifest of ``meta`` (checkpoint.json's content); ValueError says what is wrong."""
    if not isinstance(meta, dict):
        raise ValueError("not a JSON object")
    head = _need(meta, "head", str, "checkpoint")
    params = _need(meta, "params", dict, "checkpoint")
    features = [_feature(e, i) for i, e in enumerate(_need(meta, "feature_sets", list, "checkpoint"))]
    if not features:
        raise ValueError("feature_sets is empty")
    target = _need(meta, "target", dict, "checkpoint")
    for key in ("name", "column"):
        _need(target, key, str, "target")
    labels = target.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)
                               or not all(isinstance(x, str) and x for x in labels)):
        raise ValueError(f"target: labels should be distinct non-empty strings (or null), got {labels!r}")
    norm = _need(meta, "normalisation", dict, "checkpoint")
    for f in features:
        stats = norm.get(f.name)
        if not isinstance(stats, dict):
            raise ValueError(f"normalisation of {f.name!r} is missing")
        _vector(stats, "mean", f.dim, f.name)
        _vector(stats, "std", f.dim, f.name, positive=True)
        if "frame_mean" in stats or f.frame_dim:
            if f.frame_dim is None:
                raise ValueError(f"{f.name}: frame statistics without a frame_dim")
            _vector(stats, "frame_mean", f.frame_dim, f.name)
            _vector(stats, "frame_std", f.frame_dim, f.name, positive=True)
    return Manifest(head, params, features, target, norm)


def check(path: Path, meta: Any) -> Manifest:
    """:func:`parse`, refusing in one line."""
    try:
        return parse(meta)
    except ValueError as exc:
        raise BadCheckpoint(f"{path}: checkpoint.json is not a valid checkpoint: {exc}; retrain it "
                            "(`emostore train`) or restore the folder") from None
