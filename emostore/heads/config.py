"""How heads train (:class:`TrainConfig`): a light module (no PyTorch), so that the command line
builds its options from it without loading the models."""

from __future__ import annotations

from dataclasses import dataclass

from emostore.core.options import option


@dataclass
class TrainConfig:
    """How to train; the head's own hyperparameters live in its ``Params``. Each field with help
    text is also an option of ``train`` and ``sweep``."""

    epochs: int = option(60, help="Most epochs to train.", min=1)
    batch_size: int | None = option(None, help="Utterances per batch [256]; dialogues per batch for the context "
                                               "and sequence heads [32].", min=1)
    lr: float = option(1e-3, help="AdamW learning rate.")
    weight_decay: float = option(1e-2, help="AdamW weight decay.")
    patience: int = option(8, help="Stop after this many epochs without a better dev score.", min=1)
    class_weights: bool = option(False, help="Weigh the loss (and kNN votes) by inverse class frequency in the "
                                             "training split.")
    modality_dropout: float = option(0.0, help="Probability of hiding each present modality of a training row "
                                               "(one always stays).", min=0.0, max=1.0)
    label_smoothing: float = option(0.0, help="Cross-entropy label smoothing (classification).", min=0.0, max=1.0)
    ema: float = option(0.0, help="Keep an exponential moving average of the weights with this decay; it is what "
                                  "gets evaluated and kept (0: off).", min=0.0, max=1.0)
    seed: int = option(0, help="Random seed (runs are reproducible on the CPU; sweep: the first of --seeds).")
    device: str = option("auto", help="auto (CUDA when present, then Apple MPS, else the CPU), cpu, cuda, cuda:1, "
                                      "mps.")
    #: CPU threads while training (None: torch's default). These models are too small to gain
    #: from more than one, and extra threads spin and slow down on a busy machine.
    threads: int | None = 1

    def batch(self, sequence: bool) -> int:
        return self.batch_size or (32 if sequence else 256)
