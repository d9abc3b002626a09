"""What runs inside the extraction runner's worker processes.

Kept apart from :mod:`emostore.extract.runner` so that a spawned worker imports only what
encoding needs (numpy, pandas, the encoder's module), not the store, Zarr or the progress bars.
A worker may build its encoder as soon as it starts (:func:`start`, from the same options the
main process builds its own from), while the main process is still loading; each block names
the encoder it wants by its stored configuration, and a worker whose encoder differs rebuilds it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from emostore.extract.base import Encoded, Encoder

_ENCODER: Encoder | None = None
_KEY: str | None = None

#: What identifies an encoder: its class, stored configuration, name and runtime options.
Spec = tuple[type[Encoder], dict[str, Any], str, dict[str, Any]]


def _key(cls: type[Encoder], config: dict[str, Any], name: str, runtime: dict[str, Any]) -> str:
    return json.dumps([cls.__module__, cls.__qualname__, config, name, runtime], sort_keys=True, default=str)


def start(build: tuple[str, str, dict[str, Any], dict[str, Any], str | None] | None = None) -> None:
    """Pool initializer: with ``build`` (modality, kind, options, runtime, name), build the encoder
    now, as the main process does. A failure here is left to the main process to report."""
    global _ENCODER, _KEY
    if build is None:
        return
    from emostore.extract.base import build_encoder

    try:
        enc = build_encoder(build[0], build[1], build[2], build[3], name=build[4])
    except Exception:  # noqa: BLE001  (the main process builds the same encoder and reports the error)
        return
    _ENCODER, _KEY = enc, _key(type(enc), enc.stored_config, enc.name, enc.runtime)


def ready() -> bool:
    """A no-op task: submitting one per worker starts the processes at once."""
    return True


def encode_block(spec: Spec, block: pd.DataFrame, positions: np.ndarray | None = None) -> Encoded:
    """Encode the rows of ``block`` at ``positions`` (default: all; the others are their dialogues'
    other turns) with the encoder ``spec`` describes (built once per process)."""
    global _ENCODER, _KEY
    key = _key(*spec)
    if _ENCODER is None or _KEY != key:
        cls, config, name, runtime = spec
        _ENCODER, _KEY = cls.from_config(config, name=name, **runtime), key
    return _ENCODER.encode_rows(block.reset_index(drop=True), np.arange(len(block)) if positions is None else positions)
