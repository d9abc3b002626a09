"""What ``emostore finetune text`` takes (:class:`FinetuneOptions`): a light module (no PyTorch),
so that the command line builds its options from it."""

from __future__ import annotations

from dataclasses import dataclass

from emostore.core.options import option
from emostore.core.runtime import PRECISIONS


@dataclass
class FinetuneOptions:
    """The command's options; each field is an option of ``emostore finetune text``."""

    model: str = option("minilm", help="Base model: the bundled MiniLM (minilm), bert, roberta, distilbert, or a "
                                       "Hugging Face name or local folder.", metavar="NAME|PATH")
    target: str = option("emotion", help="emotion classes, or sentiment (regression on sentiment_score when the "
                                         "store has scores, else classes).", choices=("emotion", "sentiment"))
    past: int | None = option(None, help="Earlier turns of the dialogue in the input [0, or the teacher's].", min=0)
    future: int | None = option(None, help="Later turns of the dialogue in the input [0, or the teacher's].", min=0)
    speaker: bool | None = option(None, help="Write turns as 'Speaker: text' [on, or the teacher's].",
                                  flags=("--speaker/--no-speaker",))
    epochs: int = option(4, help="Epochs (the best one on dev is kept).", min=1)
    lr: float = option(5e-5, help="AdamW peak learning rate.")
    batch_size: int = option(32, help="Utterances per batch.", min=1)
    grad_accum: int = option(1, help="Batches per optimiser step.", min=1)
    max_length: int | None = option(None, help="Token limit of an input [the model's, at most 512].", min=8)
    class_weights: bool = option(False, help="Weigh the loss by inverse class frequency.")
    label_smoothing: float = option(0.0, help="Cross-entropy label smoothing.", min=0.0, max=1.0)
    warmup: float = option(0.1, help="Share of steps warming the learning rate up.", min=0.0, max=1.0)
    weight_decay: float = option(0.01, help="AdamW weight decay.")
    seed: int = option(0, help="Random seed (runs are reproducible on the CPU).")
    folds: int = option(0, help="Cross-fitting: also train K models, each without one fold of the train dialogues "
                                "(0: none).", min=0)
    device: str = option("auto", help="auto (CUDA when present, then Apple MPS, else the CPU), cpu, cuda, cuda:1, "
                                      "mps.")
    precision: str = option("auto", help="auto: bfloat16 autocast on CUDA cards and CPUs that have it (AMX, "
                                         "AVX-512 BF16), float16 on older cards, float32 elsewhere.",
                            choices=("auto", *PRECISIONS))
    save_every: int = option(200, help="Also save the training state every N optimiser steps (it is saved after "
                                       "every epoch).", min=0)
    threads: int | None = option(None, help="CPU threads [torch's].", min=1)
    max_batch_tokens: int = option(4096, help="Compute batches wider than this many padded tokens in parts (the "
                                              "same step, bounded memory; 0: never).", min=0)
    teacher: str | None = option(None, help="Distil a fine-tuned model: train on its soft labels mixed with the "
                                            "gold ones, reading its input format.", metavar="MODEL_DIR")
    temperature: float = option(2.0, help="--teacher: softmax temperature of the soft labels.", min=0.01)
    distill_weight: float = option(0.5, help="--teacher: share of the loss from the soft labels.", min=0.0, max=1.0)

    def check_model(self) -> None:
        """Refuse at once, before PyTorch loads, a base model that is neither a local folder nor
        cached while the Hugging Face hub cannot be reached (see :mod:`emostore.extract.hub`)."""
        from emostore.extract.finetuned import resolve_source
        from emostore.extract.hub import local_or_hub

        source, _ = resolve_source(self.model)
        local_or_hub(source, what=f"text model {self.model!r} ({source})")
