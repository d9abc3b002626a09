"""The model being fine-tuned: a Hugging Face encoder, utterance-mean pooling and a linear layer;
and how it is written out as a standard Hugging Face / sentence-transformers folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor, nn

from emostore.extract.dialogue_input import embed
from emostore.finetune.state import save_tensors

CLASSIFIER = "classifier.safetensors"


class TextClassifier(nn.Module):
    """``backbone`` -> mean over the utterance segment -> dropout -> linear (logits or a score)."""

    def __init__(self, backbone: nn.Module, n_out: int, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(int(backbone.config.hidden_size), n_out)

    def embed(self, batch: dict[str, Tensor]) -> Tensor:
        return embed(self.backbone, batch)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.embed(batch)))


def export(model: TextClassifier, tokenizer: Any, out: Path, *, max_length: int) -> None:
    """Write ``out`` as a Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer)
    that is also a sentence-transformers model (Transformer + mean pooling, saved by
    sentence-transformers itself), plus the classifier."""
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers 6 moved its modules
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    out.mkdir(parents=True, exist_ok=True)
    model.backbone.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    encoder = Transformer(str(out), max_seq_length=max_length)
    pooling = Pooling(int(model.backbone.config.hidden_size), pooling_mode="mean")
    SentenceTransformer(modules=[encoder, pooling], device="cpu").save(str(out), create_model_card=False)
    save_tensors(out / CLASSIFIER, {"weight": model.classifier.weight, "bias": model.classifier.bias})


def load_classifier(model_dir: Path, backbone: nn.Module, n_out: int) -> TextClassifier:
    """The fine-tuned classifier of ``model_dir`` around an already loaded backbone."""
    model = TextClassifier(backbone, n_out)
    state = load_file(str(Path(model_dir) / CLASSIFIER))
    model.classifier.load_state_dict(state)
    return model


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only (not on biases and normalisation weights)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

