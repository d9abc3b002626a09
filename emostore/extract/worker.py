"""What runs inside the extraction runner's worker processes.

Kept apart from :mod:`emostore.extract.runner` so that a spawned worker imports only what
encoding needs (numpy, pandas, the encoder's module), not the store, Zarr or the progress bars.
A worker may build its encoder as soon as it starts (:func:`start`, from the same options the
main process builds its own from), while the main process is still loading; each block names
the encoder it wants by its stored configuration, and a worker whose encoder differs rebuilds it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from emostore.extract.base import Encoded, Encoder, EncoderSpec

_ENCODER: Encoder | None = None
_KEY: str | None = None


def start(spec: EncoderSpec | None = None) -> None:
    """Pool initializer: with ``spec`` (a request from the command's options), build the encoder
    now, as the main process does. A failure here is left to the main process to report."""
    global _ENCODER, _KEY
    if spec is None:
        return
    try:
        enc = spec.build()
    except Exception:  # noqa: BLE001  (the main process builds the same encoder and reports the error)
        return
    _ENCODER, _KEY = enc, enc.spec.key


def ready() -> bool:
    """A no-op task: submitting one per worker starts the processes at once."""
    return True


def encode_block(spec: EncoderSpec, block: pd.DataFrame, positions: np.ndarray | None = None) -> Encoded:
    """Encode the rows of ``block`` at ``positions`` (default: all; the others are their dialogues'
    other turns) with the encoder ``spec`` describes (built once per process)."""
    global _ENCODER, _KEY
    if _ENCODER is None or _KEY != spec.key:
        _ENCODER, _KEY = spec.build(), spec.key
    return _ENCODER.encode_rows(block.reset_index(drop=True), np.arange(len(block)) if positions is None else positions)
