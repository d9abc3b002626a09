"""Loading text transformers for fine-tuning and fine-tuned ones for extraction.

A fine-tuned model is a standard Hugging Face folder (``config.json``, ``model.safetensors``,
tokenizer files, and the sentence-transformers module files) plus ``finetune.json``, which says
how it was trained and how its inputs are built (:mod:`emostore.extract.dialogue_input`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emostore.core.hashing import files_hash
from emostore.errors import UserError
from emostore.extract.hub import local_or_hub, one_line
from emostore.extract.text_models import BUNDLED_MODEL, FINETUNE_META, HF_ALIASES, bundled_model_path

META = FINETUNE_META
#: ``--model bert|roberta|distilbert``: the Hugging Face models these names stand for.
ALIASES = HF_ALIASES
BUNDLED = BUNDLED_MODEL



def read_meta(path: str | Path) -> dict[str, Any]:
    """``finetune.json``, checked: a damaged or hand-edited one is refused in one line."""
    p = Path(path) / META
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p}: cannot read it ({exc})") from None
    problem = meta_problem(meta)
    if problem:
        raise UserError(f"{p}: not a valid fine-tuned model description: {problem}; fine-tune it again or restore "
                        "the folder")
    return meta


def meta_problem(meta: Any) -> str | None:
    """What is wrong with a ``finetune.json`` (None when it holds what its readers use)."""
    if not isinstance(meta, dict):
        return "not a JSON object"
    inp = meta.get("input")
    if not isinstance(inp, dict):
        return "'input' is missing"
    for key, kind in (("past", int), ("future", int), ("max_length", int), ("speaker", bool)):
        if not isinstance(inp.get(key), kind) or (kind is int and (isinstance(inp[key], bool) or inp[key] < 0)):
            return f"input {key!r} should be a{'n integer >= 0' if kind is int else ' boolean'}, got {inp.get(key)!r}"
    target = meta.get("target")
    if not isinstance(target, dict) or not isinstance(target.get("name"), str) or \
            not isinstance(target.get("column"), str):
        return "'target' (name, column) is missing"
    labels = target.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels or len(set(labels)) != len(labels)):
        return f"target labels should be distinct strings (or null), got {labels!r}"
    if not isinstance(meta.get("model_hash"), str):
        return "'model_hash' is missing"
    for m in (meta.get("cross_fit") or {}).get("models", []):
        if not isinstance(m, dict) or not isinstance(m.get("path"), str) or Path(m["path"]).is_absolute() \
                or ".." in Path(m["path"]).parts:
            return f"a cross-fitting model path is not a folder inside the model ({m!r})"
    return None


def content_hash(path: str | Path) -> str:
    """A hash of the files that define a model folder's outputs (every top-level file but
    ``finetune.json``): a retrained model gets a new hash."""
    root = Path(path)
    return files_hash(sorted(p for p in root.iterdir() if p.is_file() and p.name != META
                             and not p.name.startswith(".")))[:16]


def resolve_source(model: str) -> tuple[str, str]:
    """``(what to load, what to record)`` for a ``--model`` value: the bundled MiniLM (``minilm`` or
    its hub name), an alias, a local folder, or a Hugging Face name."""
    if model in ("", "minilm", BUNDLED):
        return str(bundled_model_path()), BUNDLED
    name = ALIASES.get(model, model)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"--model {model}: {local} is not a model folder")
        return str(_transformer_folder(local)), str(local.resolve())
    return name, name


def _transformer_folder(folder: Path) -> Path:
    """A sentence-transformers folder may keep its transformer in a module subfolder."""
    modules = folder / "modules.json"
    if modules.is_file() and not (folder / "config.json").is_file():
        try:
            for m in json.loads(modules.read_text()):
                if str(m.get("type", "")).endswith("models.Transformer"):
                    return folder / m.get("path", "")
        except (json.JSONDecodeError, AttributeError):
            pass
    return folder


def load_transformer(model: str, *, device: str = "cpu") -> tuple[Any, Any, str]:
    """``(tokenizer, AutoModel, recorded name)`` of a base or fine-tuned model, or a one-line
    UserError (an unknown name offline, a folder that is not a model)."""
    source, recorded = resolve_source(model)
    folder = local_or_hub(source, what=f"text model {model!r} ({source})")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        backbone = AutoModel.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001  (unknown name, not a model folder)
        raise UserError(f"cannot load text model {model!r} ({source}): {one_line(exc)}. Offline, use the bundled "
                        "MiniLM (the default) or a local model folder") from None
    return tokenizer, backbone.to(device), recorded


def model_max_length(backbone: Any, tokenizer: Any) -> int:
    """The longest input the model takes (position embeddings; RoBERTa keeps two for padding)."""
    limit = int(getattr(backbone.config, "max_position_embeddings", 512) or 512)
    if getattr(backbone.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and 0 < tok_limit < limit:
        limit = tok_limit
    return limit
