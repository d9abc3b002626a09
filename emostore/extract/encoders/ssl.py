"""Self-supervised speech encoders (wav2vec 2.0, HuBERT, WavLM and their relatives) from Hugging Face.

``--model`` is a local model folder or a hub name (downloaded into the Hugging Face cache when
the network allows). The folder must hold a speech model's ``config.json``, its weights and its
feature extractor (``preprocessor_config.json``); the sha256 of those files is part of the
feature set's configuration, so features from another model (or another copy that differs) are
never mixed, and prediction refuses a model that is not the one the features came from.

Each utterance's audio (``audio`` column, else ``media``, cut to its segment; the audio track of
videos too) is read as mono at the model's sampling rate and normalised as its feature extractor
says. Audio longer than ``window_s`` runs in windows overlapping by ``overlap_s``; each window
keeps the frames nearest to it (cut in the middle of each overlap), so the stitched frames cover
the utterance once. Windows of equal length run as one batch; nothing is ever padded, so a row's
features do not depend on which rows share its batch.

Stored per utterance: the mean over frames of the hidden states of each of ``layers``, as one
``L x D`` vector (heads learn a weighted sum of the layers, as SUPERB does); with ``frames``,
also the frames of ``frame_layer`` as a ragged sequence. On CUDA it runs in float16 by default.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emostore.core.hashing import files_hash
from emostore.core.runtime import resolve_device, resolve_precision
from emostore.errors import UserError
from emostore.extract.audio_io import MediaError, load_audio
from emostore.extract.base import (
    Encoded,
    Encoder,
    EncoderConfig,
    Progress,
    derived,
    register,
)
from emostore.extract.encoders.opensmile import IMAGE_SUFFIXES, row_source
from emostore.extract.hub import one_line

#: ``model_type`` values of Hugging Face speech encoders that take raw waveforms.
SPEECH_MODEL_TYPES = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "wav2vec2-conformer", "wav2vec2-bert",
                      "unispeech", "unispeech-sat", "sew", "sew-d")
#: Files whose content defines the model (weights are matched by suffix).
MODEL_FILES = ("config.json", "preprocessor_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def model_files(folder: Path) -> list[Path]:
    """The files that define a model folder's outputs, sorted by name."""
    files = [folder / n for n in MODEL_FILES if (folder / n).is_file()]
    files += sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    return files


def content_hash(folder: Path) -> str:
    """The identity of a speech model folder: :func:`~emostore.core.hashing.files_hash` of its
    :func:`model_files`."""
    return files_hash(model_files(folder))


def _stream_hash(folder: Path) -> str:
    """How emostore 0.1 recorded the same (names and contents in one stream): still accepted, so
    feature sets recorded then keep their configuration."""
    h = hashlib.sha256()
    for path in model_files(folder):
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def resolve_model(model: str) -> Path:
    """A local folder for ``model`` (a path, or a hub name fetched into the Hugging Face cache),
    checked to be a self-supervised speech encoder; every failure is a one-line :class:`UserError`."""
    path = Path(model).expanduser()
    if not path.exists():
        if model.startswith((".", "/", "~")) or model.count("/") > 1:
            raise UserError(f"SSL model {model}: no such folder")
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.txt"]))
        except Exception as exc:  # noqa: BLE001  (offline, unknown repo, gated model)
            raise UserError(f"SSL model {model!r}: not a local folder, and it cannot be fetched from the "
                            f"Hugging Face hub ({one_line(exc)}); pass the path of a downloaded model folder") from None
    if not path.is_dir():
        raise UserError(f"SSL model {path} is not a folder; pass a Hugging Face model folder "
                        "(config.json, weights, preprocessor_config.json)")
    config = path / "config.json"
    if not config.is_file():
        raise UserError(f"SSL model {path} is not a Hugging Face model folder: it has no config.json")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise UserError(f"SSL model {path}: config.json is not valid JSON ({one_line(exc)})") from None
    if model_type not in SPEECH_MODEL_TYPES:
        raise UserError(f"SSL model {path} is a {model_type or 'unknown'!s} model, not a self-supervised speech "
                        f"encoder ({', '.join(SPEECH_MODEL_TYPES)})")
    if not (path / "preprocessor_config.json").is_file():
        raise UserError(f"SSL model {path} has no feature extractor (preprocessor_config.json); save the model's "
                        "feature extractor into the folder with save_pretrained")
    if not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
        raise UserError(f"SSL model {path} has no weights (*.safetensors or *.bin)")
    return path.resolve()


@dataclass
class SSLConfig(EncoderConfig):
    """``model``: a model folder or Hugging Face name (a folder is stored as its absolute path);
    ``layers``: hidden states kept, ``all``, ``last`` or a list such as ``0,6,12`` (stored as the
    list); ``frames``: also keep the frames of ``frame_layer`` (default: the last of ``layers``);
    ``window_s``/``overlap_s``: windows for long audio; ``precision``: auto (float16 on CUDA).
    Filled in by the encoder: the model's type, the sha256 of its files, its sampling rate and
    whether its feature extractor normalises the waveform."""

    model: str = ""
    layers: str = "all"
    frames: bool = False
    frame_layer: int | None = None
    window_s: float = 20.0
    overlap_s: float = 1.0
    precision: str = "auto"
    model_type: str | None = derived()
    model_sha256: str | None = derived()
    sample_rate: int | None = derived()
    normalize: bool | None = derived()
    pooling: str = derived("mean")
    mono: str = derived("mean")
    resampler: str = derived("soxr-HQ")


def parse_layers(text: str, n_layers: int) -> list[int]:
    """``all`` (every hidden state; 0 is the input of the first transformer layer), ``last``, or a
    list such as ``0,6,12``."""
    text = str(text).strip()
    if text in ("", "all"):
        return list(range(n_layers + 1))
    if text == "last":
        return [n_layers]
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--layers must be all, last or numbers such as 0,6,12; got {text!r}") from None
    if not out or any(not 0 <= x <= n_layers for x in out) or len(set(out)) != len(out):
        raise UserError(f"--layers {text}: the model has hidden states 0..{n_layers}; "
                        "give distinct layers in that range")
    return out


@functools.lru_cache(maxsize=2)
def _load(folder: str, device: str, dtype_name: str) -> tuple[Any, Any]:
    """(feature extractor, model) loaded once per process."""
    import torch
    from transformers import AutoFeatureExtractor, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        model = AutoModel.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001  (corrupt weights, unsupported architecture)
        raise UserError(f"SSL model {folder} cannot be loaded: {one_line(exc)}") from None
    model.to(device=device, dtype=getattr(torch, dtype_name)).eval()
    return extractor, model


@register
class SSLEncoder(Encoder):
    """``ssl``: a wav2vec 2.0 / HuBERT / WavLM model; mean-pooled hidden states of ``layers`` (L x D)
    and, with ``frames``, one layer's frames."""

    modality = "audio"
    kind = "ssl"
    Config = SSLConfig
    config: SSLConfig
    chunk_rows = 64
    block_rows = 8

    def __init__(self, config: SSLConfig | None = None, *, name: str | None = None, device: str = "auto",
                 batch_size: int = 8) -> None:
        config = config or SSLConfig()
        if not config.model:
            raise UserError("--encoder ssl needs --model: a wav2vec 2.0, HuBERT or WavLM model folder or Hugging "
                            "Face name")
        if config.window_s <= 0 or not 0 <= config.overlap_s < config.window_s / 2:
            raise UserError(f"--window {config.window_s} / --overlap {config.overlap_s}: need a positive window and an "
                            "overlap of less than half of it")
        if batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        self.runtime = {"device": device, "batch_size": batch_size}
        self.folder = resolve_model(config.model)
        digest = content_hash(self.folder)
        if config.model_sha256 and config.model_sha256 != digest and config.model_sha256 == _stream_hash(self.folder):
            digest = config.model_sha256  # recorded by emostore 0.1: the same files
        if config.model_sha256 and digest != config.model_sha256:
            raise UserError(f"SSL model {self.folder} is not the model these features were made with (its files' "
                            f"sha256 {digest[:12]}... differs from {config.model_sha256[:12]}...); pass that model")
        self.device = resolve_device(device)
        precision = resolve_precision(config.precision, self.device)
        self.batch_size = batch_size
        self.extractor, self.model = _load(str(self.folder), self.device, precision)
        cfg = self.model.config
        n_layers = int(cfg.num_hidden_layers)
        chosen = parse_layers(config.layers, n_layers)
        frame_layer = config.frame_layer
        if config.frames or frame_layer is not None:
            frame_layer = chosen[-1] if frame_layer is None else int(frame_layer)
            if not 0 <= frame_layer <= n_layers:
                raise UserError(f"--frame-layer {frame_layer}: the model has hidden states 0..{n_layers}")
        model_id = str(self.folder) if Path(config.model).expanduser().exists() else config.model
        self.config = replace(config, model=model_id, layers=",".join(map(str, chosen)),
                              frames=frame_layer is not None, frame_layer=frame_layer, precision=precision,
                              model_type=str(cfg.model_type), model_sha256=digest,
                              sample_rate=int(self.extractor.sampling_rate),
                              normalize=bool(getattr(self.extractor, "do_normalize", False)))
        self.layer_ids = chosen
        width = int(cfg.hidden_size)
        #: The stored vector stacks one ``width``-d mean per layer.
        self.stacked_layers = len(chosen)
        self.dim = width * len(chosen)
        self.seq_dim = width if frame_layer is not None else None
        self.name = name or Path(config.model.rstrip("/")).name or "ssl"
        self.hop = int(np.prod(cfg.conv_stride)) if hasattr(cfg, "conv_stride") else 320

    def version(self) -> dict[str, str]:
        import torch
        import transformers

        return {**super().version(), "transformers": transformers.__version__, "torch": torch.__version__}

    # ----- audio -> windows ---------------------------------------------------------------
    def windows(self, n: int) -> list[tuple[int, int]]:
        """``(start, end)`` samples of each window: one when the audio fits, else windows of
        ``window_s`` every ``window_s - overlap_s`` seconds, the last one ending with the audio."""
        sr = self.config.sample_rate
        size, step = round(self.config.window_s * sr), round((self.config.window_s - self.config.overlap_s) * sr)
        if n <= size:
            return [(0, n)]
        starts = list(range(0, n - size, step)) + [n - size]
        return [(s, s + size) for s in starts]

    def _frames_out(self, n_samples: int) -> int:
        return int(self.model._get_feat_extract_output_lengths(n_samples))

    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        n = len(rows)
        out = Encoded.empty(n, self.dim, frames=True)
        values, ok, reasons, seqs = out.values, out.ok, out.reasons, out.sequences
        assert seqs is not None
        signals: dict[int, np.ndarray] = {}
        for i, r in enumerate(rows):
            reasons[i], signal = self._read(table, int(r))
            if signal is not None:
                signals[i] = signal
        outputs = self._windows_forward(signals)
        for i, x in signals.items():
            layers = self._stitch(len(x), [outputs[(i, w)] for w in range(len(self.windows(len(x))))])
            if any(len(h) == 0 for h in layers):
                reasons[i] = "too short for the model: no frame left after stitching"
                continue
            pooled = np.concatenate([layers[j].mean(0) for j in range(len(self.layer_ids))])
            if not np.isfinite(pooled).all():
                reasons[i] = f"the model gave non-finite values ({self.config.precision}); try --precision float32"
                continue
            values[i], ok[i] = pooled, True
            if self.seq_dim:
                seqs[i] = layers[-1]
        if progress:
            progress(n)
        if not self.seq_dim:
            out.sequences = None
        return out

    def _windows_forward(self, signals: dict[int, np.ndarray]) -> dict[tuple[int, int], list[np.ndarray]]:
        """Every window of every signal through the model, in batches of equal-length windows:
        ``{(row, window): hidden states per layer}``."""
        jobs = [(i, w, s, e) for i, x in signals.items() for w, (s, e) in enumerate(self.windows(len(x)))]
        outputs: dict[tuple[int, int], list[np.ndarray]] = {}
        by_length: dict[int, list[tuple[int, int, int, int]]] = {}
        for job in jobs:
            by_length.setdefault(job[3] - job[2], []).append(job)
        for length in sorted(by_length):
            group = by_length[length]
            for b in range(0, len(group), self.batch_size):
                batch = group[b:b + self.batch_size]
                hidden = self._forward([signals[i][s:e] for i, _, s, e in batch])
                for k, (i, w, _, _) in enumerate(batch):
                    outputs[(i, w)] = [h[k] for h in hidden]
        return outputs

    def _read(self, table: pd.DataFrame, row: int) -> tuple[str, np.ndarray | None]:
        path, start, end = row_source(table, row)
        if path is None:
            return "no audio: the utterance has no media file", None
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            return f"no audio: {path} is an image", None
        try:
            signal = load_audio(path, self.config.sample_rate, start, end)
        except MediaError as exc:
            return exc.reason, None
        if self._frames_out(len(signal)) < 1:
            seconds = len(signal) / self.config.sample_rate
            return f"too short for {self.config.model_type}: {path} gives {seconds:.3f} s of audio", None
        return "", signal

    def _forward(self, signals: list[np.ndarray]) -> list[np.ndarray]:
        """Hidden states of equal-length signals: per stored layer (and the frame layer last), ``[B, T, D]``."""
        import torch

        if self.config.normalize:
            signals = [(x - x.mean()) / np.sqrt(x.var() + 1e-7) for x in signals]
        batch = torch.from_numpy(np.stack(signals).astype(np.float32)).to(self.device, dtype=self.model.dtype)
        with torch.inference_mode():
            states = self.model(batch, output_hidden_states=True).hidden_states
        wanted = list(self.layer_ids) + ([self.config.frame_layer] if self.config.frame_layer is not None else [])
        return [states[j].float().cpu().numpy() for j in wanted]

    def _stitch(self, n: int, per_window: list[list[np.ndarray]]) -> list[np.ndarray]:
        """Frames of each wanted layer over the whole audio: each window keeps the frames whose
        centre is nearer to it than to its neighbours (cut in the middle of each overlap)."""
        wins = self.windows(n)
        if len(wins) == 1:
            return per_window[0]
        bounds = [0.0] + [(wins[k + 1][0] + wins[k][1]) / 2 for k in range(len(wins) - 1)] + [float(n)]
        parts: list[list[np.ndarray]] = [[] for _ in per_window[0]]
        for k, ((s, _), hidden) in enumerate(zip(wins, per_window)):
            t = hidden[0].shape[0]
            centres = s + (np.arange(t) + 0.5) * self.hop
            keep = (centres >= bounds[k]) & (centres < bounds[k + 1])
            for j, h in enumerate(hidden):
                parts[j].append(h[keep])
        return [np.concatenate(p) for p in parts]
