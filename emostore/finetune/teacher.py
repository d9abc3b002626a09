"""Distillation: a fine-tuned model (the teacher) labels the train rows, and a smaller model (the
student) learns from those soft labels mixed with the gold ones.

The teacher reads each row in its own input format with its own tokenizer; the student reads
the same turns (the same past/future/speaker format) with its own tokenizer. The teacher's
outputs are computed once and kept in the student's training folder, so a killed student run
resumes without running the teacher again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emostore.core.runtime import resolve_precision
from emostore.core.targets import Target
from emostore.errors import UserError
from emostore.extract.dialogue_input import DialogueFormat, TurnTokenizer
from emostore.extract.finetuned import content_hash, load_transformer, read_meta
from emostore.extract.text_models import is_finetuned
from emostore.finetune.data import FinetuneData, build_data
from emostore.finetune.model import load_classifier
from emostore.finetune.train import predict
from emostore.store import Store

OUTPUTS = "teacher-outputs.npz"


@dataclass
class Teacher:
    folder: Path
    meta: dict[str, Any]
    model_hash: str

    @property
    def format(self) -> DialogueFormat:
        return DialogueFormat.from_dict(self.meta["input"])

    def to_dict(self, temperature: float, weight: float) -> dict[str, Any]:
        """What the student's run records (and compares on resume)."""
        return {"path": str(self.folder), "model_hash": self.model_hash, "base_model": self.meta.get("base_model"),
                "temperature": temperature, "weight": weight}


def load_teacher(path: str | Path, target: Target) -> Teacher:
    """The teacher folder, refused in one line unless it is a fine-tuned model for ``target``."""
    folder = Path(path).expanduser()
    if not is_finetuned(folder):
        raise UserError(f"--teacher {folder}: not a fine-tuned model folder (no finetune.json); make one with "
                        "`emostore finetune text`")
    meta = read_meta(folder)
    theirs = meta.get("target") or {}
    if theirs.get("name") != target.name or (meta.get("labels") or None) != (target.labels or None):
        raise UserError(f"--teacher {folder} was trained for {theirs.get('name')!r} with labels "
                        f"{meta.get('labels')}; this store's {target.name!r} labels are {target.labels}")
    return Teacher(folder.resolve(), meta, content_hash(folder))


def check_format(teacher: Teacher, past: int | None, future: int | None, speaker: bool | None) -> DialogueFormat:
    """The student's input format: the teacher's; an explicit different choice is refused."""
    fmt = teacher.format
    for option, given, theirs in (("--past", past, fmt.past), ("--future", future, fmt.future),
                                  ("--speaker/--no-speaker", speaker, fmt.speaker)):
        if given is not None and given != theirs:
            raise UserError(f"{option} {given}: the student reads the teacher's input ({option} {theirs} in "
                            f"{teacher.folder}); leave {option} out")
    return fmt


def teacher_outputs(teacher: Teacher, store: Store, target: Target, rows: np.ndarray, *, device: str,
                    cache: Path, log: Any) -> np.ndarray:
    """The teacher's outputs (logits, or the score) for ``rows``, as a [table rows, n_out]
    array with NaN elsewhere; read from ``cache`` when a previous run computed them."""
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as saved:
            if str(saved["model_hash"]) == teacher.model_hash and np.array_equal(saved["rows"], rows):
                return saved["outputs"]
    tokenizer, backbone, _ = load_transformer(str(teacher.folder), device="cpu")
    turn_tokenizer = TurnTokenizer(tokenizer, int(teacher.meta["input"]["max_length"]))
    data: FinetuneData = build_data(store, target, teacher.format, turn_tokenizer)
    model = load_classifier(teacher.folder, backbone, target.n_out).to(device)
    precision = resolve_precision("auto", device)
    log(f"the teacher {teacher.folder} labels {len(rows)} train rows ({precision})")
    values = predict(model, data, turn_tokenizer, rows, device=device, precision=precision)
    outputs = np.full((len(data.y), values.shape[1]), np.nan, dtype=np.float32)
    outputs[rows] = values
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, outputs=outputs, rows=rows, model_hash=np.array(teacher.model_hash))
    os.replace(tmp, cache)
    return outputs
