"""openSMILE acoustic features per utterance: eGeMAPS and ComParE functionals, eGeMAPS LLDs.

Each row's audio comes from its ``audio`` column when the table has one (cut by ``audio_start``
and ``audio_end``), else from ``media`` (cut by ``start`` and ``end``). It is read as mono at
``sample_rate`` (:func:`emostore.extract.audio_io.load_audio`) and passed to
``opensmile.Smile.process_signal``. A row whose audio cannot be read, or that is too short for
the features, becomes a masked row with the reason; the batch goes on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emostore.errors import UserError
from emostore.extract.audio_io import MediaError, load_audio
from emostore.extract.base import Encoded, Encoder, EncoderConfig, Progress, derived, register

#: name -> (openSMILE feature set, feature level); ``-lld`` sets keep frame sequences.
FEATURE_SETS: dict[str, tuple[str, str]] = {
    "egemaps": ("eGeMAPSv02", "Functionals"),
    "compare": ("ComParE_2016", "Functionals"),
    "egemaps-lld": ("eGeMAPSv02", "LowLevelDescriptors"),
}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: openSMILE takes 16-bit samples; louder float samples would wrap around.
INT16_MAX = 32767 / 32768


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or \
        (isinstance(value, str) and not value.strip())


def _seconds(value: Any) -> float | None:
    return None if value is None or _is_missing(value) else float(value)


def row_source(table: pd.DataFrame, row: int) -> tuple[str | None, float | None, float | None]:
    """(path, start, end) of a row's audio: the ``audio`` column if set, else ``media``."""
    if "audio" in table.columns and not _is_missing(table["audio"].iat[row]):
        cols = ("audio", "audio_start", "audio_end")
    else:
        cols = ("media", "start", "end")
    path, start, end = (table[c].iat[row] if c in table.columns else None for c in cols)
    return (None if _is_missing(path) else str(path)), _seconds(start), _seconds(end)


@dataclass
class OpenSmileConfig(EncoderConfig):
    """``feature_set``: egemaps, compare or egemaps-lld; ``sample_rate``: audio is resampled to it;
    ``opensmile``: the package version (filled in: values differ between versions)."""

    feature_set: str = "egemaps"
    sample_rate: int = 16000
    mono: str = derived("mean")
    resampler: str = derived("soxr-HQ")
    opensmile: str | None = derived()


@register
class OpenSmileEncoder(Encoder):
    """openSMILE through its Python package; ``egemaps-lld`` stores 25-d frames every 10 ms
    and, as the fixed-size vector, their mean and standard deviation (50-d)."""

    modality = "audio"
    kind = "opensmile"
    Config = OpenSmileConfig
    config: OpenSmileConfig
    chunk_rows = 256
    block_rows = 8

    def __init__(self, config: OpenSmileConfig | None = None, *, name: str | None = None) -> None:
        config = config or OpenSmileConfig()
        try:
            import opensmile
        except ModuleNotFoundError:
            raise UserError("audio extraction needs openSMILE: pip install 'emostore[audio]'") from None
        if config.feature_set not in FEATURE_SETS:
            raise UserError(f"unknown audio feature set {config.feature_set!r}; choose from {', '.join(FEATURE_SETS)}")
        if config.sample_rate < 8000:
            raise UserError(f"--sample-rate {config.sample_rate}: openSMILE's feature sets need at least 8000 Hz")
        self.runtime: dict[str, Any] = {}
        self.config = replace(config, opensmile=opensmile.__version__)
        self.feature_set_name = config.feature_set
        self.sample_rate = int(config.sample_rate)
        self.name = name or config.feature_set
        smile_set, level = FEATURE_SETS[config.feature_set]
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, smile_set),
                                     feature_level=getattr(opensmile.FeatureLevel, level))
        self.frames = level == "LowLevelDescriptors"
        width = len(self.smile.feature_names)
        self.seq_dim = width if self.frames else None
        self.dim = 2 * width if self.frames else width

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``values`` columns (for LLDs: ``<lld>_mean`` then ``<lld>_std``)."""
        names = list(self.smile.feature_names)
        return [f"{n}_mean" for n in names] + [f"{n}_std" for n in names] if self.frames else names

    def version(self) -> dict[str, str]:
        import av
        import opensmile
        import soundfile
        import soxr

        return {**super().version(), "opensmile": opensmile.__version__, "av": av.__version__,
                "soundfile": soundfile.__version__, "libsndfile": soundfile.__libsndfile_version__,
                "soxr": soxr.__version__}

    def features(self, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(values, frames or None) for one mono signal at ``sample_rate``."""
        signal = np.clip(signal, -1.0, INT16_MAX)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Segment too short": we check for NaN ourselves
            out = self.smile.process_signal(signal, self.sample_rate).to_numpy(dtype=np.float32)
        if not self.frames:
            return out[0], None
        return np.concatenate([out.mean(axis=0), out.std(axis=0)]), out

    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        out = Encoded.empty(len(rows), self.dim, frames=True)
        for i, r in enumerate(rows):
            out.reasons[i] = self._encode_one(table, int(r), out.values, out.sequences, i)  # type: ignore[arg-type]
            out.ok[i] = not out.reasons[i]
            if progress:
                progress(1)
        if not self.frames:
            out.sequences = None
        return out

    def _encode_one(self, table: pd.DataFrame, row: int, values: np.ndarray,
                    seqs: list[np.ndarray | None], i: int) -> str:
        """Fill slot ``i``; returns the reason the row failed, or '' on success."""
        path, start, end = row_source(table, row)
        if path is None:
            return "no audio: the utterance has no media file"
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            return f"no audio: {path} is an image"
        try:
            signal = load_audio(path, self.sample_rate, start, end)
        except MediaError as exc:
            return exc.reason
        try:
            vec, frames = self.features(signal)
        except Exception as exc:  # noqa: BLE001  (openSMILE errors are per row)
            return f"openSMILE failed on {path}: {exc}"
        if not np.isfinite(vec).all():
            return (f"too short for {self.feature_set_name}: {path} gives "
                    f"{len(signal) / self.sample_rate:.3f} s of audio")
        values[i] = vec
        seqs[i] = frames
        return ""
