"""What every head shares: the ``Head`` interface, the registry and masked early fusion.

A head maps one or more feature sets to ``n_out`` outputs (class logits, or one score for
regression). It receives the standardised feature tensors ``xs`` (one per feature set) and the
modality ``mask`` (``True`` where the feature set has a value for that row). A masked value is
never data: heads zero it themselves (:func:`masked`) and see the mask as input, so whatever
sits in a masked row cannot change a prediction.

Per-utterance heads take ``xs[m]: [B, D_m]`` and ``mask: [B, M]``. Sequence heads
(``sequence = True``) take one dialogue per batch row: ``xs[m]: [B, T, D_m]``,
``mask: [B, T, M]``, plus ``valid: [B, T]`` (not padding) and ``speakers: [B, T]``.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

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
    #: Trained by gradient descent; ``False`` for memory-based heads (see :meth:`remember`).
    trainable: ClassVar[bool] = True

    def __init__(self, dims: list[int], n_out: int, params: HeadParams):
        super().__init__()
        self.dims = list(dims)
        self.n_out = n_out
        self.params = params

    def remember(self, xs: list[Tensor], mask: Tensor, y: Tensor, weights: Tensor | None = None) -> None:
        """Memory-based heads store their training rows here instead of being trained."""
        raise NotImplementedError

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Load a state dict saved by this head (memory heads resize their buffers first)."""
        self.load_state_dict(state, strict=True)


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
    order = ["linear", "mlp", "late", "gated", "attention", "context", "knn"]
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
        kwargs[key] = _convert(value, type(default), f"{name}.{key}")
    return cls(**kwargs)


def _convert(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, str) or kind is str:
        return kind(value) if kind in (int, float) and not isinstance(value, bool) else value
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except ValueError:
        raise UserError(f"{where}: cannot read {value!r} as {kind.__name__}") from None


def build_head(name: str, dims: list[int], n_out: int, params: HeadParams | dict[str, Any] | None = None) -> Head:
    """A new head ``name`` for feature sets of ``dims`` with ``n_out`` outputs."""
    cls = head_class(name)
    if not isinstance(params, HeadParams):
        params = make_params(name, params)
    return cls(dims, n_out, params)


def describe_heads() -> list[dict[str, Any]]:
    """Every registered head: name, summary (its module's first line) and hyperparameter defaults."""
    out = []
    for name in head_names():
        cls = HEADS[name]
        doc = (inspect.getdoc(inspect.getmodule(cls)) or inspect.getdoc(cls) or "").split("\n\n")[0]
        doc = re.sub(r"^``[\w-]+``:\s*", "", doc.replace("\n", " "))
        out.append({"name": name, "summary": doc, "params": asdict(cls.Params())})
    return out


def params_dict(params: HeadParams) -> dict[str, Any]:
    return asdict(params)
