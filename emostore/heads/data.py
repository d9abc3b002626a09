"""Features and labels from a store, for training and prediction.

Each feature set is standardised with the mean and standard deviation of its valid training
rows only; rows without a value (``mask == False``) are set to zero and stay masked. Dialogues
(one per dialogue and split, in turn order) and per-dialogue speaker numbers are kept for the
dialogue heads. Only the table columns this needs are read (:mod:`emostore.heads.table_columns`).

Feature vectors that fit the memory budget (``--memory-budget``, :mod:`emostore.heads.memory`)
are loaded once into tensors (``xs``); larger ones stay in the store and are read a window of
rows at a time (:mod:`emostore.heads.stream`), with their statistics from one streaming pass.
Either way, training and prediction go through :meth:`HeadData.windows`: in memory it gives the
whole data as one window, streamed a window of rows per step, so both run the same code.

Heads that read frame sequences (``frames = True``) also get, for every feature set that keeps
them, all its frames in one flat tensor (:class:`Frames`), read from the store a chunk at a time
and standardised with the statistics of the training rows' frames; batches are padded from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emostore.errors import UserError
from emostore.heads.memory import gib, resolve_budget
from emostore.heads.stream import (
    MIN_STD,
    FeatureReader,
    feature_stats,
    finish_moments,
    merge_moments,
    plan_windows,
    prefetch,
    standardise,
)
from emostore.heads.table_columns import (  # noqa: F401  (Target, resolve_target: re-exported)
    TARGETS,
    Target,
    dialogue_order,
    read_split,
    read_target,
    resolve_target,
)
from emostore.store import Store

__all__ = ["MIN_STD", "TARGETS", "Frames", "HeadData", "Target", "load_data", "read_frames", "resolve_target"]


@dataclass
class HeadData:
    """Everything a head trains and predicts on, aligned to the store's rows."""

    feature_sets: list[str]
    dims: list[int]
    config_hashes: list[str]
    target: Target
    split: np.ndarray                   # str per row
    xs: list[Tensor]                    # [N, D_m] float32, standardised, zero where masked; [] when streamed
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
    #: Reads the features from the store a window at a time (None: ``xs`` hold every row).
    reader: FeatureReader | None = None
    #: Bytes of feature vectors this data may hold in memory (``--memory-budget``).
    budget: int = 0
    #: The store, for the utterance ids (read only when asked for).
    store: Store | None = None
    #: A window's rows in the store (None: the data holds every row of the store).
    origin: np.ndarray | None = None
    #: Per incomplete feature set: how many of its rows are not extracted yet (masked).
    incomplete: dict[str, int] = field(default_factory=dict)

    @property
    def frame_dims(self) -> list[int | None]:
        return [None if f is None else f.dim for f in (self.frames or [None] * len(self.dims))]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def streamed(self) -> bool:
        return self.reader is not None

    @property
    def ids(self) -> np.ndarray:
        """Every row's utterance id (read from the store on first use)."""
        if self.store is None:
            raise ValueError("this data has no store to read ids from")
        return self.store.ids

    def ids_of(self, rows: np.ndarray) -> np.ndarray:
        """The utterance ids of ``rows`` only."""
        if self.store is None:
            raise ValueError("this data has no store to read ids from")
        return self.store.ids_of(np.asarray(rows, dtype=np.int64))

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

    # ----- windows: the whole data in memory, or a window of rows at a time from the store -------
    def features(self, rows: np.ndarray) -> list[Tensor]:
        """The standardised vectors of ``rows``, one tensor per feature set."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.reader is None:
            index = torch.as_tensor(rows, device=self.mask.device)
            return [x[index] for x in self.xs]
        order = np.argsort(rows, kind="stable")
        parts = self.reader.read(rows[order])
        back = torch.as_tensor(np.argsort(order, kind="stable"))
        return [p[back].to(self.mask.device) for p in parts]

    def subset(self, rows: np.ndarray, xs: list[Tensor], dialogues: list[np.ndarray] | None = None) -> HeadData:
        """Rows ``rows`` (sorted) as data of their own, holding their vectors ``xs``; ``dialogues``
        are given in positions within ``rows``."""
        index = torch.as_tensor(rows, device=self.mask.device)
        return HeadData(self.feature_sets, self.dims, self.config_hashes, self.target, self.split[rows], xs,
                        self.mask[index], self.y[index], dialogues or [], self.speakers[index], self.norm,
                        [None] * len(self.dims), self.layers,
                        None if self.groups is None else self.groups[rows], None, self.budget, None, rows)

    def windows(self, units: np.ndarray | list[np.ndarray],
                rng: np.random.Generator | None = None) -> Iterator[tuple[HeadData, Any]]:
        """``(window, its units)`` for training over ``units`` (rows, or dialogues' row arrays): in
        memory the data itself, once; streamed, windows of whole units in a random order drawn from
        ``rng``, their units given as positions within the window."""
        if self.reader is None:
            yield self, units
            return
        sequence = not isinstance(units, np.ndarray)
        plan = plan_windows(units, self.reader.chunk_rows, self.reader.window_rows(self.budget), rng)

        def load(which: np.ndarray) -> tuple[HeadData, Any]:
            if not sequence:
                rows = np.sort(np.asarray(units)[which])
                return self.subset(rows, self.reader.read(rows)), np.arange(len(rows))  # type: ignore[union-attr]
            parts = [units[i] for i in which]
            rows = np.unique(np.concatenate(parts))
            local = [np.searchsorted(rows, d) for d in parts]
            return self.subset(rows, self.reader.read(rows), local), local  # type: ignore[union-attr]

        yield from prefetch(load, plan)

    def prediction_windows(self, rows: np.ndarray, sequence: bool) -> Iterator[tuple[HeadData, np.ndarray, np.ndarray]]:
        """``(window, rows within it, their positions in rows)`` covering ``rows`` in store order
        (dialogue heads: windows of whole dialogues)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.reader is None:
            yield self, rows, np.arange(len(rows))
            return
        position = np.full(len(self), -1, dtype=np.int64)
        position[rows] = np.arange(len(rows))
        if sequence:
            units: Any = [d for d in self.dialogues if (position[d] >= 0).any()]
        else:
            units = np.sort(rows)
        for window, local in self.windows(units):
            held = window.origin
            assert held is not None
            local_rows = np.flatnonzero(position[held] >= 0) if sequence else local
            yield window, local_rows, position[held[local_rows]]


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
              frames: bool = False, split: np.ndarray | None = None,
              memory_budget: str | int | None = None, require_complete: bool = False) -> HeadData:
    """Read the feature sets and the target of every row of ``store``.

    A checkpoint passes its :class:`Target` (label map) and ``norm``; otherwise the label map is
    built from the training split and the statistics are computed on it. With ``frames``, the
    frame sequences of the feature sets that keep them are read too, and a row of such a feature
    set counts as present only when it has frames. ``split`` replaces the table's split of each
    row (cross-validation folds). Vectors beyond ``memory_budget`` (bytes, or a size such as
    ``4G``; default a share of the free memory) stay in the store and stream. ``require_complete``:
    refuse a feature set with rows not extracted yet (otherwise they are masked, and counted in
    ``incomplete``).
    """
    names = resolve_feature_sets(store, feature_sets)
    n = len(store)
    if split is None:
        split = read_split(store)
    elif len(split) != n:
        raise ValueError(f"split has {len(split)} rows, the store {n}")
    tgt, values = read_target(store, split, target)
    train = split == "train"
    if norm is None and not train.any():
        raise UserError(f"{store.url}: no rows in the train split to compute normalisation statistics from")
    sets = [store.feature_set(name) for name in names]
    budget = resolve_budget(memory_budget)
    need = 2 * 4 * n * sum(fs.dim for fs in sets)  # the vectors as read, and standardised
    streamed = need > budget
    if streamed and (speaker_norm or frames):
        what = "--speaker-norm" if speaker_norm else "frame sequences"
        raise UserError(f"{store.url}: {what} need(s) the features in memory ({gib(need)}), over the memory budget "
                        f"({gib(budget)}); raise --memory-budget or train without them")
    dialogues, speakers, groups = dialogue_order(store, split)
    xs, masks, stats, seqs, means, incomplete = [], [], {}, [], [], {}
    for fs in sets:
        if missing := _missing_rows(store, fs, require_complete):
            incomplete[fs.name] = missing
        mask = fs.mask()
        if norm is None and not (train & mask).any():
            raise UserError(f"{store.url}: feature set {fs.name!r} has no valid row in the train split")
        X = None if streamed else fs.read_values()[0]
        if X is not None and speaker_norm:
            X = speaker_normalise(X, mask, np.where(groups == "", [f"\0{i}" for i in range(n)], groups))
        mean, std = _statistics(fs, X, train & mask, norm, speaker_norm)
        stats[fs.name] = {"mean": mean.tolist(), "std": std.tolist()}
        means.append((mean, std))
        seq = None
        if frames and fs.seq_dim:
            who = np.where(groups == "", [f"\0{i}" for i in range(n)], groups) if speaker_norm else None
            seq, mask = _load_frames(store, fs, mask, train, who, norm, stats[fs.name])
        if X is not None:
            xs.append(torch.from_numpy(standardise(X, mask, mean, std)))
        masks.append(mask)
        seqs.append(seq)
    y = torch.from_numpy(values if tgt.regression else values.astype(np.int64))
    reader = FeatureReader(sets, means) if streamed else None
    return HeadData(names, [fs.dim for fs in sets], [fs.config_hash for fs in sets], tgt, split, xs,
                    torch.from_numpy(np.stack(masks, 1)), y, dialogues, torch.from_numpy(speakers), stats, seqs,
                    [fs.layers for fs in sets], groups, reader, budget, store, None, incomplete)


def _missing_rows(store: Store, fs: Any, require_complete: bool) -> int:
    """Rows of ``fs`` not extracted yet; refused with ``require_complete``."""
    missing = int((~fs.done()).sum())
    if missing and require_complete:
        raise UserError(f"{store.url}: feature set {fs.name} is incomplete: {missing} of {fs.n_rows} rows are "
                        "not extracted yet; run its extract command again to finish it, or pass "
                        "--allow-incomplete to train without them")
    return missing


def _statistics(fs: Any, X: np.ndarray | None, ref: np.ndarray, norm: dict[str, dict[str, list[float]]] | None,
                speaker_norm: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``fs``: the checkpoint's (``norm``), else those of the ``ref``
    rows (the valid training rows), from ``X`` or streamed from the store when ``X`` is None."""
    if norm is not None:
        return (np.asarray(norm[fs.name]["mean"], dtype=np.float32),
                np.asarray(norm[fs.name]["std"], dtype=np.float32))
    if speaker_norm:  # already standardised, per speaker (see speaker_normalise)
        return np.zeros(fs.dim, np.float32), np.ones(fs.dim, np.float32)
    if X is None:
        return feature_stats(fs, ref)
    count, m1, m2 = merge_moments((0, np.zeros(fs.dim), np.zeros(fs.dim)), X[ref])
    return finish_moments(m1, m2, count)


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
