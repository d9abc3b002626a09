"""Text encoders: sentence-transformers models and plain Hugging Face models (mean-pooled).

Inside a block of rows each distinct input text is encoded once, longest first, so batches
carry little padding. A block is always encoded the same way whatever else is pending, which
keeps a resumed extraction identical to an uninterrupted one.
"""

from __future__ import annotations

import functools
import re
from abc import abstractmethod
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from emostore.core.runtime import resolve_device, resolve_precision
from emostore.errors import UserError
from emostore.extract.base import (
    Encoded,
    Encoder,
    EncoderConfig,
    Progress,
    build_encoder,
    derived,
    register,
)
from emostore.extract.dialogue_input import dialogue_order
from emostore.extract.hub import local_or_hub, one_line
from emostore.extract.text_models import BUNDLED_MODEL, HF_ALIASES, bundled_model_path, is_finetuned

#: Context inputs keep the current utterance: when too long, tokens are dropped from the left.
CONTEXT_FORMAT = "speaker-lines-v1"


def _quiet_transformers() -> None:
    """Our own progress bar is the one that counts; silence the per-load weight bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()



def default_name(model: str) -> str:
    if model in ("", "minilm", BUNDLED_MODEL):
        return "minilm"
    if model in HF_ALIASES:
        return model
    slug = re.sub(r"[^a-z0-9.+-]+", "-", Path(model.rstrip("/")).name.lower()).strip("-")
    return slug or "text"


def build_inputs(table: pd.DataFrame, rows: np.ndarray, context: int) -> list[str | None]:
    """The string to encode for each row: its text, or (``speaker-lines-v1``) the ``context``
    turns before it and itself, one ``Speaker: text`` line each (turns without text in that window
    are left out), in the dialogue order of :func:`~emostore.extract.dialogue_input.dialogue_order`."""
    texts = table["text"].to_numpy()
    if context <= 0:
        return [texts[r] for r in rows]
    speakers = table["speaker"].to_numpy()
    dialogues, where = dialogue_order(table)
    out: list[str | None] = []
    for r in rows:
        if texts[r] is None:
            out.append(None)
            continue
        seq, pos = dialogues[where[r, 0]], int(where[r, 1])
        window = [p for p in seq[max(0, pos - context):pos + 1] if texts[p] is not None]
        out.append("\n".join(f"{speakers[p]}: {texts[p]}" if speakers[p] else texts[p] for p in window))
    return out


@dataclass
class TextConfig(EncoderConfig):
    """``model``: a sentence-transformers or Hugging Face name or path (stored resolved);
    ``context``: previous turns in the input; ``max_length``: token limit (default: the
    model's); ``precision``: float32, float16 or bfloat16 (auto: float16 on CUDA);
    ``pooling``: set by the encoder (``model`` for sentence-transformers; ``mean`` or ``cls``
    for plain Hugging Face models)."""

    model: str = BUNDLED_MODEL
    context: int = 0
    context_format: str | None = derived()
    max_length: int | None = None
    precision: str = "auto"
    pooling: str | None = None


class TextEncoder(Encoder):
    """Shared logic: validate texts, deduplicate, sort by length, batch, scatter back."""

    modality = "text"
    Config = TextConfig
    config: TextConfig
    #: A worker encodes whole chunks: the same length-sorted batches as one process, so the same bits.
    block_rows: ClassVar[int] = 1 << 30

    def __init__(self, config: TextConfig, *, name: str | None = None, device: str = "auto", batch_size: int = 64):
        self.runtime = {"device": device, "batch_size": batch_size}
        self.model_name = config.model
        # before torch loads (seconds): a hub name that cannot be fetched fails at once
        self.source = self._source()
        self.device = resolve_device(device)
        precision = resolve_precision(config.precision, self.device)
        if config.context < 0:
            raise UserError(f"--context must be >= 0, got {config.context}")
        self.precision = precision
        self.batch_size = batch_size
        self.context = config.context
        self.name = name or (default_name(config.model) + (f"-ctx{config.context}" if config.context else ""))
        self._load(config.max_length, config.pooling)
        self.config = replace(config, model=self.model_id, max_length=self.max_length, precision=precision,
                              pooling=self.pooling, context_format=CONTEXT_FORMAT if config.context else None)

    model_id: str
    pooling: str
    max_length: int

    @abstractmethod
    def _source(self) -> str:
        """What to load: a local folder, or a hub name (see :func:`~emostore.extract.hub.local_or_hub`)."""

    @abstractmethod
    def _load(self, max_length: int | None, pooling: str | None) -> None:
        """Load the model from ``source``; set ``model_id``, ``max_length``, ``pooling`` and ``dim``."""

    @abstractmethod
    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        """One batch of distinct strings -> [n, dim] float32."""

    def encode_texts(self, texts: list[str], progress: Progress | None = None) -> np.ndarray:
        """Encode distinct strings longest first, in batches; returns vectors in input order."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._encode_texts([texts[i] for i in idx])
            if progress:
                progress(len(idx))
        return out

    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        inputs = build_inputs(table, rows, self.context)
        n = len(rows)
        ok = np.zeros(n, dtype=bool)
        reasons = [""] * n
        groups: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(inputs):
            if s is None or not isinstance(s, str) or not s.strip():
                reasons[i] = "no text: the utterance is empty or not a string"
            else:
                groups[s].append(i)
                ok[i] = True
        if progress and (~ok).any():
            progress(int((~ok).sum()))
        values = np.full((n, self.dim), np.nan, dtype=np.float32)
        distinct = list(groups)
        weights = [len(groups[s]) for s in distinct]

        covered = 0

        def row_progress(k: int) -> None:  # report rows covered, not distinct strings
            nonlocal covered
            a = covered
            covered += k
            if progress:
                progress(sum(weights[j] for j in order_done[a:a + k]))

        order_done = sorted(range(len(distinct)), key=lambda i: -len(distinct[i]))
        if distinct:
            vecs = self.encode_texts(distinct, progress=row_progress)
            for s, v in zip(distinct, vecs):
                values[groups[s]] = v
        return Encoded(values, ok, reasons)


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(source: str, device: str, precision: str) -> tuple[Any, int]:
    """Load once per process: the plain and the context feature sets share one model. Also the
    model's own token limit, read before any encoder sets its own on the shared model."""
    import torch
    from sentence_transformers import SentenceTransformer

    _quiet_transformers()
    try:
        model = SentenceTransformer(source, device=device)
    except Exception as exc:  # noqa: BLE001  (unknown name, bad path, not a model: one line)
        raise UserError(f"cannot load text model {source!r}: {one_line(exc)}. Offline, use the "
                        "default (bundled MiniLM) or a local model directory.") from None
    if precision != "float32":
        model.to(getattr(torch, precision))
    return model, int(model.max_seq_length or 512)


@register
class SentenceTransformerEncoder(TextEncoder):
    """Any sentence-transformers model name or local path; the bundled MiniLM by default."""

    kind = "sentence-transformers"

    def _source(self) -> str:
        name = self.model_name
        if name in ("", "minilm", BUNDLED_MODEL):
            return str(bundled_model_path())
        return local_or_hub(name, what=f"text model {name!r}",
                            also=() if "/" in name else (f"sentence-transformers/{name}",))

    def _load(self, max_length: int | None, pooling: str | None) -> None:
        if pooling not in (None, "model"):
            raise UserError(f"sentence-transformers models pool as the model says; pooling {pooling!r} is "
                            "for --encoder huggingface")
        name = self.model_name
        if name in ("", "minilm", BUNDLED_MODEL):
            self.model_id = BUNDLED_MODEL
        else:
            self.model_id = str(Path(name).resolve()) if Path(name).exists() else name
        self.model, default_length = _load_sentence_transformer(self.source, self.device, self.precision)
        self.max_length = int(max_length or default_length)
        self.pooling = "model"
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())

    def version(self) -> dict[str, str]:
        import sentence_transformers
        import torch

        return {**super().version(), "sentence_transformers": sentence_transformers.__version__,
                "torch": torch.__version__}

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        # the model may be shared with another encoder: set per call what this one needs
        self.model.max_seq_length = self.max_length
        self.model.tokenizer.truncation_side = "left" if self.context else "right"
        vecs = self.model.encode(texts, batch_size=len(texts), convert_to_numpy=True,
                                 show_progress_bar=False)
        return np.asarray(vecs, dtype=np.float32)


@register
class HuggingFaceEncoder(TextEncoder):
    """A plain Hugging Face encoder (``bert``, ``roberta``, ``distilbert`` or any name/path),
    mean-pooled over the attention mask."""

    kind = "huggingface"

    def _source(self) -> str:
        name = HF_ALIASES.get(self.model_name, self.model_name)
        return local_or_hub(name, what=f"Hugging Face model {self.model_name!r} ({name})")

    def _load(self, max_length: int | None, pooling: str | None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if pooling not in (None, "mean", "cls"):
            raise UserError(f"pooling for Hugging Face models is mean or cls, got {pooling!r}")
        _quiet_transformers()
        name = HF_ALIASES.get(self.model_name, self.model_name)
        self.model_id = str(Path(name).resolve()) if Path(name).exists() else name
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.source)
            self.model = AutoModel.from_pretrained(self.source)
        except Exception as exc:  # noqa: BLE001  (unknown name, bad path, not a model: one line)
            raise UserError(f"cannot load Hugging Face model {self.model_name!r} ({name}): {one_line(exc)}. "
                            "Offline, pass a local model directory.") from None
        self.tokenizer.truncation_side = "left" if self.context else "right"
        dtype = getattr(torch, self.precision)
        self.model.to(device=self.device, dtype=dtype).eval()
        limit = getattr(self.model.config, "max_position_embeddings", 512) or 512
        self.max_length = int(min(max_length or 512, limit))
        self.pooling = pooling or "mean"
        self.dim = int(self.model.config.hidden_size)

    def version(self) -> dict[str, str]:
        import torch
        import transformers

        return {**super().version(), "transformers": transformers.__version__, "torch": torch.__version__}

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            if self.pooling == "cls":
                return hidden[:, 0].float().cpu().numpy()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return pooled.float().cpu().numpy()


def auto_kind(model: str) -> str:
    """The encoder ``--encoder auto`` picks for ``model``: ``finetuned`` for a folder written by
    ``emostore finetune text``, plain Hugging Face for the aliases, else sentence-transformers."""
    if is_finetuned(model):
        return "finetuned"
    return "huggingface" if model in HF_ALIASES else "sentence-transformers"


def text_encoder(model: str = "minilm", *, backend: str = "auto", name: str | None = None,
                 device: str | None = None, batch_size: int | None = None, **options: Any) -> TextEncoder:
    """A text encoder from user options (``context``, ``precision``, ``max_length``, ``pooling``);
    ``backend`` is the encoder kind, ``auto`` as :func:`auto_kind`."""
    kind = auto_kind(model) if backend == "auto" else backend
    enc = build_encoder("text", kind, {"model": model, **options}, {"device": device, "batch_size": batch_size},
                        name=name)
    assert isinstance(enc, TextEncoder)
    return enc
