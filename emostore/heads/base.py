"""What every head shares: the ``Head`` interface, the registry and masked early fusion.

A head maps one or more feature sets to ``n_out`` outputs (class logits, or one score for
regression). It receives the standardised feature tensors ``xs`` (one per feature set) and the
modality ``mask`` (``True`` where the feature set has a value for that row). A masked value is
never data: heads zero it themselves (:func:`masked`) and see the mask as input, so whatever
sits in a masked row cannot change a prediction.

Per-utterance heads take ``xs[m]: [B, D_m]`` and ``mask: [B, M]``. Dialogue heads
(``sequence = True``) take one dialogue per batch row: ``xs[m]: [B, T, D_m]``,
``mask: [B, T, M]``, plus ``valid: [B, T]`` (not padding) and ``speakers: [B, T]``. Frame heads
(``frames = True``) are per-utterance heads that also take ``frames``: per feature set, ``None``
or ``([B, T, F_m] padded frames, [B] lengths)``; they are built with ``frame_dims`` (``F_m``, or
None for a feature set without frames).

Feature sets that stack ``L`` layers per vector (``L x D``, as speech encoders store them) reach
trainable heads as one ``D``-d vector: a learned softmax-weighted sum of the layers (SUPERB's
weighted sum), applied before the head's ``forward``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from emostore.core.convert import convert
from emostore.core.docs import plain_summary
from emostore.errors import UserError


@dataclass
class HeadParams:
    """Hyperparameters shared by the neural heads; each head extends this dataclass."""

    hidden: int = 256
    dropout: float = 0.3


class Head(nn.Module):
    """Base class of the heads. Subclasses set ``name`` and ``Params`` and implement ``forward``."""

    name: ClassVar[str]
    Params: ClassVar[type[HeadParams]] = HeadParams
    #: Takes whole dialogues (see the module docstring) instead of single utterances.
    sequence: ClassVar[bool] = False
    #: Trained by gradient descent; ``False`` for heads fitted in one go (see :meth:`remember`).
    trainable: ClassVar[bool] = True
    #: Reads the frame sequences of the feature sets that keep them (see the module docstring).
    frames: ClassVar[bool] = False

    def __init__(self, dims: list[int], n_out: int, params: HeadParams):
        super().__init__()
        self.dims = list(dims)
        self.n_out = n_out
        self.params = params

    def remember(self, xs: list[Tensor], mask: Tensor, y: Tensor, weights: Tensor | None = None,
                 groups: list[str] | None = None) -> None:
        """Heads that are not trained by gradient descent fit (or store) their training rows here.
        ``weights``: per-row weights (class weights); ``groups``: each row's speaker, "" unknown."""
        raise NotImplementedError

    def fitted_with(self) -> str:
        """What a head fitted in one go (not :attr:`trainable`) settled on, for the user: ``C=0.1``."""
        return ""

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a state dict saved by this head (memory heads resize their buffers first)."""
        self.load_state_dict(state, strict=True)


class Dropout(nn.Dropout):
    """Inverted dropout drawn as ``uniform < 1 - p``: the same distribution as ``nn.Dropout``, whose
    CPU ``bernoulli_`` takes about 3x longer on these heads' batches (2.4 against 0.9 ms for
    256 x 385 values, one thread), which was a third of an mlp's training time."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        keep = 1.0 - self.p
        if keep <= 0:
            return torch.zeros_like(x)
        return x * (torch.rand_like(x) < keep).to(x.dtype) * (1.0 / keep)


def masked(x: Tensor, present: Tensor) -> Tensor:
    """``x`` with every row whose modality is absent set to exactly zero (NaN and garbage included)."""
    return torch.where(present.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))


def fuse(xs: list[Tensor], mask: Tensor) -> Tensor:
    """Early fusion: masked feature sets concatenated, followed by the mask itself as 0/1 flags."""
    parts = [masked(x, mask[..., m]) for m, x in enumerate(xs)]
    return torch.cat(parts + [mask.to(parts[0].dtype)], dim=-1)


def fused_dim(dims: list[int]) -> int:
    return sum(dims) + len(dims)


# ----- registry ------------------------------------------------------------------------------
HEADS: dict[str, type[Head]] = {}


def register(cls: type[Head]) -> type[Head]:
    HEADS[cls.name] = cls
    return cls


def _discover() -> None:
    """Import every module of ``emostore.heads.models``: a new head is one new file there."""
    from emostore.heads import models

    for info in pkgutil.iter_modules(models.__path__):
        importlib.import_module(f"{models.__name__}.{info.name}")


def head_names() -> list[str]:
    _discover()
    order = ["linear", "mlp", "late", "gated", "attention", "context", "knn", "sequence", "svm", "logreg"]
    return sorted(HEADS, key=lambda n: (order.index(n) if n in order else len(order), n))


def head_class(name: str) -> type[Head]:
    _discover()
    if name not in HEADS:
        raise UserError(f"unknown head {name!r}; choose one of {', '.join(head_names())}")
    return HEADS[name]


def make_params(name: str, values: dict[str, Any] | None = None) -> HeadParams:
    """The head's hyperparameters: defaults overridden by ``values`` (strings are converted)."""
    cls = head_class(name).Params
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in (values or {}).items():
        key = key.replace("-", "_")
        if key not in known:
            raise UserError(f"head {name!r} has no parameter {key!r}; it has {', '.join(known)}")
        default = getattr(cls(), key)
        kwargs[key] = convert(value, type(default), f"{name}.{key}")
    return cls(**kwargs)


class LayerMix(nn.Module):
    """A learned softmax-weighted sum over the ``L`` stacked layers of each layered feature set."""

    def __init__(self, layers: list[int]):
        super().__init__()
        self.layers = list(layers)
        self.weights = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in layers)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        out = []
        for x, n, w in zip(xs, self.layers, self.weights):
            if n > 1:
                x = (x.unflatten(-1, (n, -1)) * torch.softmax(w, 0).unsqueeze(-1)).sum(-2)
            out.append(x)
        return out


def _mix_layers(head: Head, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (head.layer_mix(args[0]), *args[1:])


def build_head(name: str, dims: list[int], n_out: int, params: HeadParams | dict[str, Any] | None = None, *,
               frame_dims: list[int | None] | None = None, layers: list[int] | None = None) -> Head:
    """A new head ``name`` for feature sets of ``dims`` with ``n_out`` outputs.

    ``frame_dims``: the frame width of each feature set read as frames (frame heads only);
    ``layers``: how many layers each feature set stacks (trainable heads learn to weigh them).
    """
    cls = head_class(name)
    if not isinstance(params, HeadParams):
        params = make_params(name, params)
    layers = list(layers or [1] * len(dims))
    mix = cls.trainable and any(n > 1 for n in layers)
    if mix:
        for d, n in zip(dims, layers):
            if d % n:
                raise UserError(f"a feature set of {d} values cannot stack {n} layers")
        dims = [d // n for d, n in zip(dims, layers)]
    if cls.frames:
        head = cls(dims, n_out, params, frame_dims=list(frame_dims or [None] * len(dims)))  # type: ignore[call-arg]
    else:
        head = cls(dims, n_out, params)
    if mix:
        head.layer_mix = LayerMix(layers)
        head.register_forward_pre_hook(_mix_layers)
    return head


def describe_heads() -> list[dict[str, Any]]:
    """Every registered head: name, summary (its module's first line) and hyperparameter defaults."""
    out = []
    for name in head_names():
        cls = HEADS[name]
        doc = plain_summary(inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or "")
        out.append({"name": name, "summary": doc, "params": asdict(cls.Params())})
    return out


def params_dict(params: HeadParams) -> dict[str, Any]:
    return asdict(params)
