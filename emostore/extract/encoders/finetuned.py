"""``text/finetuned``: a model folder written by ``emostore finetune text``.

Each turn is built exactly as in fine-tuning (:mod:`emostore.extract.dialogue_input`: the
utterance as ``Speaker: text``, then its past and future turns) and pooled over the utterance
segment. The configuration records the model folder's content hash and its input format, so a
retrained model is another configuration and the store's staleness checks catch it.

With ``cross_fit``, each train row of the store the model was trained on gets its vector from
the fold model that did not see it (``finetune --folds K``); every other row, and every live
turn, gets the full model's.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from emostore.core.runtime import resolve_device, resolve_precision
from emostore.errors import UserError
from emostore.extract.base import (
    Encoded,
    Encoder,
    EncoderConfig,
    Progress,
    derived,
    register,
)
from emostore.extract.dialogue_input import INPUT_FORMAT, POOLING, DialogueFormat, TurnTokenizer, dialogue_turns, embed
from emostore.extract.finetuned import content_hash, read_meta
from emostore.extract.text_models import is_finetuned
from emostore.store.table import columns_hash

#: The table columns a fine-tuned model read, when its finetune.json does not list them.
READ_COLUMNS = ["id", "dialogue", "turn", "speaker", "text", "split"]


@dataclass
class FinetunedConfig(EncoderConfig):
    """``model``: a folder from ``emostore finetune text`` (stored resolved); ``cross_fit``: give the
    train rows of the store it was trained on their vectors from the fold models that did not see
    them (needs ``finetune --folds K``); ``precision``: float32, float16 or bfloat16 (auto: float16
    on CUDA). The rest is read from the folder: content hashes, base model, input format."""

    model: str = ""
    cross_fit: bool = False
    precision: str = "auto"
    model_hash: str | None = derived()
    #: Where the model folder lies relative to the store (both on a local disk), so that a store
    #: and its model moved together to another machine still find each other.
    model_from_store: str | None = derived()
    fold_hashes: list[str] | None = derived()
    base_model: str | None = derived()
    input_format: str | None = derived()
    past: int | None = derived()
    future: int | None = derived()
    speaker: bool | None = derived()
    max_length: int | None = derived()
    pooling: str | None = derived()


def _relative_to(folder: Path, store: str | None) -> str | None:
    """``folder`` relative to a local store's directory (None for object storage or no store)."""
    if not store or "://" in str(store):
        return None
    return os.path.relpath(folder, Path(store).resolve())


def locate(config: FinetunedConfig, store: str | None) -> Path:
    """The model folder: where the configuration says, or, for a store moved with its model to
    another place, at the recorded path relative to the store (the content hash is checked after)."""
    folder = Path(config.model).expanduser()
    if not is_finetuned(folder) and config.model_from_store and store and "://" not in str(store):
        moved = Path(store) / config.model_from_store
        if is_finetuned(moved):
            return moved
    if not is_finetuned(folder):
        raise UserError(f"{folder} is not a fine-tuned model folder (no finetune.json); make one with "
                        "`emostore finetune text`" + (" (or move it beside its store as it was)"
                                                      if config.model_from_store else ""))
    return folder


def default_name(folder: Path, cross_fit: int) -> str:
    slug = re.sub(r"[^a-z0-9.+-]+", "-", folder.resolve().name.lower()).strip("-") or "finetuned"
    return slug + (f"-xfit{cross_fit}" if cross_fit else "")


@register
class FinetunedTextEncoder(Encoder):
    """A fine-tuned text model (``emostore finetune text``): its own input format and pooling."""

    modality = "text"
    kind = "finetuned"
    Config = FinetunedConfig
    config: FinetunedConfig
    #: A worker encodes whole chunks: the same length-sorted batches as one process, so the same bits.
    block_rows: ClassVar[int] = 1 << 30

    def __init__(self, config: FinetunedConfig, *, name: str | None = None, device: str = "auto",
                 batch_size: int = 64, store: str | None = None):
        self.runtime = {"device": device, "batch_size": batch_size, "store": store}
        if not config.model:
            raise UserError("the finetuned encoder needs --model: a folder written by `emostore finetune text`")
        folder = locate(config, store)
        self.folder = folder.resolve()
        self.meta = meta = read_meta(folder)
        self.device = resolve_device(device)
        precision = resolve_precision(config.precision, self.device)
        self.precision = precision
        self.batch_size = batch_size
        self.format = DialogueFormat.from_dict(meta["input"])
        model_hash = self._check_hash(self.folder, config.model_hash)
        cf = meta.get("cross_fit") or {}
        if config.cross_fit and not cf:
            raise UserError(f"{folder} has no cross-fitting models: fine-tune it with --folds K to use cross_fit")
        self.fold_dirs = [self.folder / m["path"] for m in cf.get("models", [])] if config.cross_fit else []
        recorded = config.fold_hashes or [None] * len(self.fold_dirs)
        fold_hashes = [self._check_hash(d, h) for d, h in zip(self.fold_dirs, recorded)]
        self.fold_of: dict[str, int] = {str(k): int(v) for k, v in cf.get("fold_of", {}).items()} if config.cross_fit \
            else {}
        trained_on = meta.get("store") or {}
        self.table_columns = list(trained_on.get("columns") or [*READ_COLUMNS, meta["target"]["column"]])
        self.table_hash = trained_on.get("table_hash")
        self._checked: tuple[int, bool] | None = None
        self._load()
        self.name = name or default_name(self.folder, len(self.fold_dirs))
        inp = meta["input"]
        rebuilt = config.model_hash is not None  # from a stored configuration: keep it as recorded
        self.config = replace(config, model=config.model if rebuilt else str(self.folder), precision=precision,
                              model_hash=model_hash, model_from_store=config.model_from_store if rebuilt else
                              _relative_to(self.folder, store),
                              fold_hashes=fold_hashes or None, base_model=meta.get("base_model"),
                              input_format=inp.get("format", INPUT_FORMAT), past=self.format.past,
                              future=self.format.future, speaker=self.format.speaker,
                              max_length=int(inp["max_length"]), pooling=inp.get("pooling", POOLING))

    @staticmethod
    def _check_hash(folder: Path, recorded: str | None) -> str:
        actual = content_hash(folder)
        if recorded and recorded != actual:
            raise UserError(f"model folder {folder} changed since this feature set's configuration was recorded "
                            f"(content hash {actual}, recorded {recorded}): it was retrained or replaced; "
                            "extract the feature set again (--overwrite) and retrain what uses it")
        return actual

    def _load(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
            self.models = {None: AutoModel.from_pretrained(str(self.folder))}
            for k, d in enumerate(self.fold_dirs):
                self.models[k] = AutoModel.from_pretrained(str(d))
        except Exception as exc:  # noqa: BLE001  (a damaged folder)
            raise UserError(f"cannot load the fine-tuned model in {self.folder}: {exc}") from None
        dtype = getattr(torch, self.precision)
        for m in self.models.values():
            m.to(device=self.device, dtype=dtype).eval()
        self.tokenizer = TurnTokenizer(tokenizer, int(self.meta["input"]["max_length"]))
        self.dim = int(self.models[None].config.hidden_size)

    def version(self) -> dict[str, str]:
        import torch
        import transformers

        return {**super().version(), "transformers": transformers.__version__, "torch": torch.__version__}

    def _fold_rows(self, table: pd.DataFrame) -> bool:
        """Whether this table is the store the model was trained on (then its train rows are
        cross-fitted); a table with those ids but other content is refused."""
        if not self.fold_of or "id" not in table or "split" not in table:
            return False
        if self._checked is None or self._checked[0] != id(table):
            same = columns_hash(table, self.table_columns) == self.table_hash
            if not same and table["id"].astype(str).isin(list(self.fold_of)).any():
                raise UserError(f"cross-fitting with {self.folder} needs the store it was fine-tuned on: this "
                                "table has its utterance ids but other content; extract without cross_fit")
            self._checked = (id(table), same)
        return self._checked[1]

    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        import torch

        items = self.tokenizer.encode(dialogue_turns(table, rows, self.format))
        n = len(rows)
        values = np.full((n, self.dim), np.nan, dtype=np.float32)
        ok = np.array([t is not None for t in items], dtype=bool)
        reasons = ["" if good else "no text: the utterance is empty or not a string" for good in ok]
        if progress and (~ok).any():
            progress(int((~ok).sum()))
        groups: dict[int | None, list[int]] = {}
        folds = self._fold_rows(table)  # else every row gets the full model
        ids = table["id"].to_numpy() if folds else None
        split = table["split"].to_numpy() if folds else None
        for i in np.flatnonzero(ok):
            r = rows[i]
            key = self.fold_of.get(str(ids[r])) if folds and split[r] == "train" else None  # type: ignore[index]
            groups.setdefault(key, []).append(int(i))
        for key, members in groups.items():
            members.sort(key=lambda i: len(items[i].input_ids))  # type: ignore[union-attr]
            for s in range(0, len(members), self.batch_size):
                idx = members[s:s + self.batch_size]
                batch = {k: v.to(self.device) for k, v in self.tokenizer.collate([items[i] for i in idx]).items()}
                with torch.inference_mode():
                    values[idx] = embed(self.models[key], batch).float().cpu().numpy()
                if progress:
                    progress(len(idx))
        return Encoded(values, ok, reasons)
