"""Features and labels from a store, loaded once into tensors for training and prediction.

Each feature set is standardised with the mean and standard deviation of its valid training
rows only; rows without a value (``mask == False``) are set to zero and stay masked. Dialogues
(one per dialogue and split, in turn order) and per-dialogue speaker numbers are kept for the
dialogue heads.

Heads that read frame sequences (``frames = True``) also get, for every feature set that keeps
them, all its frames in one flat tensor (:class:`Frames`), read from the store a chunk at a time
and standardised with the statistics of the training rows' frames; batches are padded from it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emostore.core.targets import TARGETS, Target, resolve_target  # noqa: F401  (heads' names)
from emostore.errors import UserError
from emostore.store import Store

#: Standard deviations below this are treated as constant features (divided by 1).
MIN_STD = 1e-6


@dataclass
class HeadData:
    """Everything a head trains and predicts on, aligned to the store's rows."""

    feature_sets: list[str]
    dims: list[int]
    config_hashes: list[str]
    target: Target
    ids: np.ndarray
    split: np.ndarray                   # str per row
    xs: list[Tensor]                    # [N, D_m] float32, standardised, zero where masked
    mask: Tensor                        # [N, M] bool
    y: Tensor                           # long (-1: no label) or float (NaN: no score)
    dialogues: list[np.ndarray]         # row indices in turn order, one array per dialogue and split
    speakers: Tensor                    # [N] long: speaker number within its dialogue, -1 unknown
    norm: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    #: Per feature set: its frame sequences when they were loaded (``load_data(frames=True)``), else None.
    frames: list[Frames | None] = field(default_factory=list)
    #: Per feature set: how many layers its vector stacks (``L x D`` vectors of speech encoders), else 1.
    layers: list[int] = field(default_factory=list)
    #: Speaker of every row across the store (for grouped cross-validation), "" when unknown.
    groups: np.ndarray | None = None
    #: Per incomplete feature set: how many of its rows are not extracted yet (masked).
    incomplete: dict[str, int] = field(default_factory=dict)

    @property
    def frame_dims(self) -> list[int | None]:
        return [None if f is None else f.dim for f in (self.frames or [None] * len(self.dims))]

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, split: str, labelled: bool = True) -> np.ndarray:
        """Row indices of ``split`` (only those with a label or score by default)."""
        keep = self.split == split
        if labelled:
            keep &= self.has_label.cpu().numpy()
        return np.flatnonzero(keep)

    @property
    def has_label(self) -> Tensor:
        return torch.isfinite(self.y) if self.target.regression else self.y >= 0

    def to(self, device: torch.device | str) -> HeadData:
        self.xs = [x.to(device) for x in self.xs]
        self.mask, self.y, self.speakers = self.mask.to(device), self.y.to(device), self.speakers.to(device)
        self.frames = [None if f is None else f.to(device) for f in self.frames]
        return self

    def frame_lengths(self) -> Tensor:
        """``[N]`` the longest frame sequence of each row over the feature sets with frames (0: none)."""
        out = torch.zeros(len(self), dtype=torch.long)
        for f in self.frames:
            if f is not None:
                out = torch.maximum(out, f.lengths.cpu())
        return out


@dataclass
class Frames:
    """The frame sequences of one feature set for every row, in one flat tensor: row ``r`` has
    ``values[offsets[r]:offsets[r] + lengths[r]]`` (standardised; missing values are 0)."""

    values: Tensor      # [F, D] float32
    offsets: Tensor     # [N] long
    lengths: Tensor     # [N] long, 0 for rows without frames

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def to(self, device: torch.device | str) -> Frames:
        return Frames(self.values.to(device), self.offsets.to(device), self.lengths.to(device))

    def batch(self, rows: Tensor, max_frames: int = 0, random_crop: bool = False) -> tuple[Tensor, Tensor]:
        """``([B, T, D] frames padded with zeros, [B] lengths)`` of ``rows`` (-1: a padding row).

        Sequences longer than ``max_frames`` (0: no limit) are cropped: at a random place when
        ``random_crop`` (training), else in the middle.
        """
        device = self.values.device
        rows = rows.to(device)
        safe = rows.clamp(min=0)
        lengths = torch.where(rows >= 0, self.lengths[safe], torch.zeros((), dtype=torch.long, device=device))
        start = self.offsets[safe]
        if max_frames > 0 and bool((lengths > max_frames).any()):
            excess = (lengths - max_frames).clamp(min=0)
            if random_crop:
                shift = (torch.rand(len(rows), device=device) * (excess + 1).to(torch.float32)).long()
                shift = torch.minimum(shift, excess)
            else:
                shift = excess // 2
            start, lengths = start + shift, lengths.clamp(max=max_frames)
        width = max(int(lengths.max()) if len(rows) else 0, 1)
        pos = torch.arange(width, device=device)
        valid = pos < lengths.unsqueeze(1)
        index = torch.where(valid, start.unsqueeze(1) + pos, torch.zeros((), dtype=torch.long, device=device))
        if not len(self.values):
            return torch.zeros(len(rows), width, self.dim, device=device), lengths
        return self.values[index] * valid.unsqueeze(-1), lengths


def read_frames(fs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(frames [F, D], lengths [N])`` of a feature set that keeps frame sequences: one read per
    done chunk (a chunk's frames are stored contiguously in row order), nothing per row."""
    done = fs.done()
    lengths = np.zeros(fs.n_rows, dtype=np.int64)
    parts = []
    for chunk in range(fs.n_chunks):
        sl = fs.chunk_slice(chunk)
        if not done[sl].all():
            continue  # not finished: its frames do not count yet
        lengths[sl], chunk_frames = fs.chunk_frames(chunk)  # damage: one line naming the chunk
        parts.append(chunk_frames)
    frames = np.concatenate(parts) if parts else np.zeros((0, int(fs.seq_dim)), np.float32)
    return frames, lengths


def _frame_stats(frames: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-aware mean and std (float32) of the frames selected by ``keep``; constant dims get std 1."""
    ref = frames[keep].astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: handled below
        mean, std = np.nanmean(ref, 0), np.nanstd(ref, 0)
    mean = np.nan_to_num(mean, nan=0.0).astype(np.float32)
    std = np.where(~np.isfinite(std) | (std < MIN_STD), 1.0, std).astype(np.float32)
    return mean, std


def speaker_normalise_frames(frames: np.ndarray, lengths: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Z-score each speaker's frames with the statistics of all that speaker's frames (no labels)."""
    out = frames.copy()
    owner = np.repeat(np.arange(len(lengths)), lengths)
    for who in pd.unique(speakers):
        keep = (speakers == who)[owner]
        if keep.sum() < 2:
            continue
        mean, std = _frame_stats(frames, keep)
        out[keep] = (frames[keep] - mean) / std
    return out


def resolve_feature_sets(store: Store, names: list[str] | str) -> list[str]:
    """Full feature set names; a modality alone (``text``) is accepted when it has one feature set."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if not names:
        raise UserError("no feature sets given: pass --features, e.g. --features text/minilm")
    have = store.feature_sets()
    out = []
    for name in names:
        if name in have:
            out.append(name)
            continue
        matches = [h for h in have if h.split("/", 1)[0] == name]
        if len(matches) == 1:
            out.append(matches[0])
        elif len(matches) > 1:
            raise UserError(f"{store.url}: {name!r} is ambiguous ({', '.join(matches)}); name one of them")
        else:
            raise UserError(f"{store.url}: no feature set {name!r} (have: {', '.join(have) or 'none'}); "
                            "run `emostore extract` first")
    if len(set(out)) != len(out):
        raise UserError(f"feature set listed twice: {', '.join(out)}")
    return out


def _dialogues(table: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """Row order of each (dialogue, split), and each row's speaker number within its dialogue."""
    n = len(table)
    # a row without a dialogue is a dialogue of its own
    keys = [d if isinstance(d, str) and d else f"\0{i}" for d, i in zip(table["dialogue"], table["id"])]
    frame = pd.DataFrame({
        "d": keys,
        "s": table["split"].fillna("").astype(str).to_numpy(),
        "t": pd.to_numeric(table["turn"], errors="coerce").fillna(0).to_numpy(),
        "r": np.arange(n),
    })
    speaker = table["speaker"].to_numpy()
    speakers = np.full(n, -1, dtype=np.int64)
    dialogues: list[np.ndarray] = []
    for _, g in frame.sort_values(["d", "s", "t", "r"], kind="stable").groupby(["d", "s"], sort=False):
        rows = g["r"].to_numpy()
        dialogues.append(rows)
        seen: dict[Any, int] = {}
        for r in rows:
            who = speaker[r]
            if isinstance(who, str) and who:
                speakers[r] = seen.setdefault(who, len(seen))
    return dialogues, speakers


#: With --speaker-norm, a feature whose spread within a speaker is below this share of its spread
#: over all rows counts as constant for that speaker (its z-score is 0, not a division by ~0).
RELATIVE_STD_FLOOR = 1e-3


def speaker_normalise(X: np.ndarray, mask: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    """Z-score each speaker's rows with that speaker's own statistics (all their valid rows, no
    labels): removes voice and recording differences that swamp emotion in acoustic features.

    The result is already standardised, so no second standardisation follows (one computed on
    the training speakers would divide by the tiny spread of a feature that is nearly constant
    for them, and blow up that feature for a new speaker). A feature nearly constant for a
    speaker (relative to its spread over all rows) is 0 for that speaker."""
    out = np.zeros_like(X, dtype=np.float32)
    scale = X[mask].std(0) if mask.any() else np.ones(X.shape[1], np.float32)
    floor = np.maximum(MIN_STD, RELATIVE_STD_FLOOR * np.nan_to_num(scale, nan=0.0))
    for who in pd.unique(speakers):
        rows = (speakers == who) & mask
        if rows.sum() < 2:
            continue
        mean = X[rows].mean(0)
        std = X[rows].std(0)
        constant = std < floor
        out[rows] = np.where(constant, 0.0, (X[rows] - mean) / np.where(constant, 1.0, std))
    return out


def load_data(store: Store, feature_sets: list[str] | str, target: str | Target = "emotion", *,
              norm: dict[str, dict[str, list[float]]] | None = None, speaker_norm: bool = False,
              frames: bool = False, split: np.ndarray | None = None, require_complete: bool = False) -> HeadData:
    """Read the feature sets and the target of every row of ``store``.

    A checkpoint passes its :class:`Target` (label map) and ``norm``; otherwise the label map is
    built from the training split and the statistics are computed on it. With ``frames``, the
    frame sequences of the feature sets that keep them are read too, and a row of such a feature
    set counts as present only when it has frames. ``split`` replaces the table's split of each
    row (cross-validation folds). ``require_complete``: refuse a feature set with rows not
    extracted yet (otherwise they are masked, and counted in ``incomplete``).
    """
    names = resolve_feature_sets(store, feature_sets)
    table = store.table
    if split is None:
        split = table["split"].fillna("").astype(str).to_numpy()
    elif len(split) != len(table):
        raise ValueError(f"split has {len(split)} rows, the store {len(table)}")
    tgt = target if isinstance(target, Target) else resolve_target(table.assign(split=split), target)
    train = split == "train"
    if norm is None and not train.any():
        raise UserError(f"{store.url}: no rows in the train split to compute normalisation statistics from")
    xs, masks, dims, hashes, stats, seqs, layers = [], [], [], [], {}, [], []
    who = np.array([w if isinstance(w, str) and w else f"\0{i}" for i, w in enumerate(table["speaker"])])
    incomplete = {}
    for name in names:
        fs = store.feature_set(name)
        missing = int((~fs.done()).sum())
        if missing and require_complete:
            raise UserError(f"{store.url}: feature set {name} is incomplete: {missing} of {fs.n_rows} rows are not "
                            "extracted yet; run its extract command again to finish it, or pass --allow-incomplete "
                            "to train without them")
        if missing:
            incomplete[name] = missing
        _, X, mask = fs.read()
        if speaker_norm:
            X = speaker_normalise(X, mask, who)
        if norm is not None:
            mean = np.asarray(norm[name]["mean"], dtype=np.float32)
            std = np.asarray(norm[name]["std"], dtype=np.float32)
        else:
            mean, std = _train_stats(store, name, X, train & mask, speaker_norm)
        Z = np.where(mask[:, None], (X - mean) / std, np.float32(0.0)).astype(np.float32)
        stats[name] = {"mean": mean.tolist(), "std": std.tolist()}
        seq = None
        if frames and fs.seq_dim:
            seq, mask = _load_frames(store, fs, mask, train, who if speaker_norm else None, norm, stats[name])
        xs.append(torch.from_numpy(Z))
        masks.append(mask)
        dims.append(fs.dim)
        hashes.append(fs.config_hash)
        seqs.append(seq)
        layers.append(fs.layers)
    y = _target_values(table, tgt)
    dialogues, speakers = _dialogues(table)
    groups = np.array([w if isinstance(w, str) else "" for w in table["speaker"]], dtype=object)
    return HeadData(names, dims, hashes, tgt, store.ids, split, xs, torch.from_numpy(np.stack(masks, 1)), y,
                    dialogues, torch.from_numpy(speakers), stats, seqs, layers, groups, incomplete)


def _train_stats(store: Store, name: str, X: np.ndarray, ref: np.ndarray,
                 speaker_norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the ``ref`` rows (the valid training rows); with ``speaker_norm`` the
    values are standardised already, per speaker (see :func:`speaker_normalise`)."""
    if not ref.any():
        raise UserError(f"{store.url}: feature set {name!r} has no valid row in the train split")
    if speaker_norm:
        return np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32)
    mean = X[ref].mean(0, dtype=np.float64).astype(np.float32)
    std = X[ref].std(0, dtype=np.float64).astype(np.float32)
    return mean, np.where(std < MIN_STD, np.float32(1.0), std)


def _target_values(table: pd.DataFrame, tgt: Target) -> torch.Tensor:
    """The target of every row: a float score, or the label's index (-1 for no or an unknown label)."""
    if tgt.regression:
        return torch.tensor(pd.to_numeric(table[tgt.column], errors="coerce").to_numpy(dtype=np.float32))
    index = {label: i for i, label in enumerate(tgt.labels or [])}
    return torch.tensor([index.get(v, -1) if isinstance(v, str) else -1 for v in table[tgt.column]],
                        dtype=torch.long)


def _load_frames(store: Store, fs: Any, mask: np.ndarray, train: np.ndarray, speakers: np.ndarray | None,
                 norm: dict[str, dict[str, list[float]]] | None,
                 stats: dict[str, list[float]]) -> tuple[Frames, np.ndarray]:
    """The standardised frames of ``fs`` and its mask (rows without frames become masked)."""
    values, stored = read_frames(fs)
    offsets = (np.cumsum(stored) - stored).astype(np.int64)
    mask = mask & (stored > 0)
    lengths = np.where(mask, stored, 0)
    if speakers is not None:
        values = speaker_normalise_frames(values, stored, speakers)
    owner = np.repeat(np.arange(len(stored)), stored)
    if norm is not None:
        if "frame_mean" not in norm[fs.name]:
            raise UserError(f"the checkpoint has no frame statistics for {fs.name!r}; it was not trained on its frames")
        mean = np.asarray(norm[fs.name]["frame_mean"], dtype=np.float32)
        std = np.asarray(norm[fs.name]["frame_std"], dtype=np.float32)
    else:
        keep = (train & mask)[owner]
        if not keep.any():
            raise UserError(f"{store.path}: feature set {fs.name!r} has no frames in the train split")
        mean, std = _frame_stats(values, keep)
    stats["frame_mean"], stats["frame_std"] = mean.tolist(), std.tolist()
    values = np.nan_to_num((values - mean) / std, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return Frames(torch.from_numpy(values), torch.from_numpy(offsets), torch.from_numpy(lengths)), mask


def unknown_labels(data: HeadData, table: pd.DataFrame, split: str) -> dict[str, int]:
    """Labels of ``split`` that the label map does not know (such rows cannot be scored)."""
    if data.target.regression:
        return {}
    known = set(data.target.labels or [])
    values = table.loc[data.split == split, data.target.column]
    counts = pd.Series([v for v in values if isinstance(v, str) and v not in known]).value_counts()
    return {str(k): int(v) for k, v in counts.items()}
