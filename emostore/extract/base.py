"""The encoder interface and registry shared by every modality."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from emostore.errors import UserError

Progress = Callable[[int], None]


@dataclass
class Encoded:
    """Output for a block of rows: values [n, D], ok [n], a reason for each row not ok, and
    for encoders with ``seq_dim`` one [T, seq_dim] frame sequence per row."""

    values: np.ndarray
    ok: np.ndarray
    reasons: list[str]
    sequences: list[np.ndarray | None] | None = None

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        seqs = None
        if any(p.sequences is not None for p in parts):
            seqs = [s for p in parts for s in (p.sequences or [None] * len(p.ok))]
        return Encoded(np.concatenate([p.values for p in parts]), np.concatenate([p.ok for p in parts]),
                       [r for p in parts for r in p.reasons], seqs)


class Encoder(ABC):
    """Turns rows of the utterance table into fixed-size vectors.

    ``config`` holds everything that changes the values (it is hashed into the feature set);
    ``version`` records library and model versions for provenance only.
    """

    modality: ClassVar[str]
    kind: ClassVar[str]
    #: Rows per chunk for new feature sets (None: from the dimension). Slow encoders want small
    #: chunks, so that a kill loses little work.
    chunk_rows: ClassVar[int | None] = None
    #: Block of rows sent to one worker process at a time.
    block_rows: ClassVar[int] = 8
    name: str
    dim: int
    config: dict[str, Any]
    seq_dim: int | None = None
    #: Keyword arguments that rebuild this encoder in a worker process (``type(self)(**options)``).
    options: dict[str, Any]

    @property
    def feature_set(self) -> str:
        return f"{self.modality}/{self.name}"

    def version(self) -> dict[str, str]:
        from emostore import __version__

        return {"emostore": __version__}

    @abstractmethod
    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        """Encode ``table.iloc[rows]``; ``table`` is the whole table (context encoders look back)."""


ENCODERS: dict[str, type[Encoder]] = {}


def register(cls: type[Encoder]) -> type[Encoder]:
    ENCODERS[f"{cls.modality}/{cls.kind}"] = cls
    return cls


def get_encoder_class(modality: str, kind: str) -> type[Encoder]:
    """The registered encoder class of ``modality/kind`` (imports the encoder modules first)."""
    import importlib

    for module in ("text", "audio", "ssl", "visual"):
        try:
            importlib.import_module(f"emostore.extract.{module}")
        except ImportError:  # an optional extra that is not installed
            pass
    key = f"{modality}/{kind}"
    if key not in ENCODERS:
        raise UserError(f"unknown encoder {key!r}; known: {', '.join(sorted(ENCODERS))}")
    return ENCODERS[key]


def resolve_device(device: str) -> str:
    """``auto`` picks CUDA when present, then Apple MPS, else the CPU."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
