"""The encoder interface, its typed configuration and the registry shared by every modality.

An encoder is a class with a ``modality`` (text, audio, visual), a ``kind`` (its name in the
registry and on the command line) and a ``Config`` dataclass holding everything that changes
its values. The configuration is stored with the feature set and hashed into its
``config_hash``; ``Config.from_dict(config.to_dict()) == config``, so any feature set, index or
checkpoint can rebuild the exact encoder that made it (:meth:`Encoder.from_config`). Options
that do not change the values (device, batch size, where a model file lies) are *runtime*
keyword arguments of the constructor.

Encoder modules live in :mod:`emostore.extract.encoders`, one file per encoder family, and are
found by :func:`discover`: a new encoder is one new file there.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import pkgutil
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import pandas as pd

from emostore.core.convert import convert
from emostore.core.docs import plain_summary
from emostore.core.runtime import resolve_device, stored_precision
from emostore.errors import UserError

Progress = Callable[[int], None]
C = TypeVar("C", bound="EncoderConfig")
E = TypeVar("E", bound="Encoder")

#: Missing optional packages and the extra that installs them.
EXTRAS = {"opensmile": "audio", "av": "audio", "soundfile": "audio", "soxr": "audio",
          "mediapipe": "visual", "ai_edge_litert": "visual", "cv2": "visual"}


@dataclass
class Encoded:
    """Output for a block of rows: values [n, D], ok [n], a reason for each row not ok, and
    for encoders with ``seq_dim`` one [T, seq_dim] frame sequence per row."""

    values: np.ndarray
    ok: np.ndarray
    reasons: list[str]
    sequences: list[np.ndarray | None] | None = None

    @classmethod
    def empty(cls, n: int, dim: int, *, frames: bool = False) -> Encoded:
        """``n`` rows not encoded yet: NaN values, not ok, no reason, no frames (filled in place)."""
        return cls(np.full((n, dim), np.nan, dtype=np.float32), np.zeros(n, dtype=bool), [""] * n,
                   [None] * n if frames else None)

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        seqs = None
        if any(p.sequences is not None for p in parts):
            seqs = [s for p in parts for s in (p.sequences or [None] * len(p.ok))]
        return Encoded(np.concatenate([p.values for p in parts]), np.concatenate([p.ok for p in parts]),
                       [r for p in parts for r in p.reasons], seqs)


# ----- configuration ---------------------------------------------------------------------------
def derived(default: Any = None, *, default_factory: Callable[[], Any] | None = None) -> Any:
    """A configuration field the encoder fills in or fixes (a model's hash, a library version, a
    layout description): stored and hashed like the others, but not a user option."""
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"derived": True})
    return field(default=default, metadata={"derived": True})


@dataclass
class EncoderConfig:
    """Base of the encoders' configurations: a dataclass of JSON-able fields that round-trips."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def option_names(cls) -> list[str]:
        """The fields a user may set (``-p KEY=VALUE``); the others are :func:`derived`."""
        return [f.name for f in fields(cls) if not f.metadata.get("derived")]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """The configuration stored as ``data`` (the key ``encoder``, the kind, is ignored)."""
        known = cls.field_names()
        unknown = sorted(set(data) - set(known) - {"encoder"})
        if unknown:
            raise UserError(f"{cls.__name__} has no option {', '.join(map(repr, unknown))}; "
                            f"it has {', '.join(known) or 'none'}")
        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if k in known}
        return cls(**values)

    @classmethod
    def from_options(cls: type[C], options: Mapping[str, Any]) -> C:
        """Like :meth:`from_dict`, converting strings (``-p KEY=VALUE``) to each field's type."""
        hints = typing.get_type_hints(cls)
        allowed = cls.option_names()
        converted = {}
        for key, value in options.items():
            key = key.replace("-", "_")
            if key in hints and key not in allowed:
                raise UserError(f"{key!r} is recorded by the encoder, not an option; options: {', '.join(allowed)}")
            converted[key] = convert(value, hints[key], f"{cls.__name__}.{key}") if key in hints else value
        unknown = sorted(set(converted) - set(hints))
        if unknown:
            raise UserError(f"no encoder option {', '.join(map(repr, unknown))}; options: {', '.join(allowed)}")
        return cls.from_dict(converted)


# ----- encoders --------------------------------------------------------------------------------
class Encoder(ABC):
    """Turns rows of the utterance table into fixed-size vectors (and, optionally, frames).

    Subclasses set ``modality``, ``kind`` and ``Config``; their constructor takes the config and
    keyword-only runtime options, and sets ``config`` (resolved: defaults filled in from the
    model), ``dim`` and, for frame-level encoders, ``seq_dim``.
    """

    modality: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type[EncoderConfig]] = EncoderConfig
    #: Rows per chunk for new feature sets (None: from the dimension). Slow encoders want small
    #: chunks, so that a kill loses little work.
    chunk_rows: ClassVar[int | None] = None
    #: Block of rows sent to one worker process at a time.
    block_rows: ClassVar[int] = 8
    name: str
    dim: int
    config: EncoderConfig
    seq_dim: int | None = None
    #: Runtime keyword arguments this encoder was built with (see :meth:`rebuild`).
    runtime: dict[str, Any]

    @property
    def feature_set(self) -> str:
        return f"{self.modality}/{self.name}"

    @property
    def stored_config(self) -> dict[str, Any]:
        """What the feature set stores and hashes: the kind and the resolved configuration."""
        return {"encoder": self.kind, **self.config.to_dict()}

    def version(self) -> dict[str, str]:
        """Library and model versions, for provenance only (not hashed)."""
        from emostore import __version__

        return {"emostore": __version__}

    @classmethod
    def runtime_options(cls) -> list[str]:
        """Names of the runtime keyword arguments the constructor takes."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY and p.name != "name"]

    @classmethod
    def from_config(cls: type[E], config: Mapping[str, Any] | EncoderConfig, *, name: str | None = None,
                    **runtime: Any) -> E:
        """The encoder a stored configuration describes. Runtime options the class does not
        take (``device`` for an encoder that has none) are dropped; a recorded precision is kept
        (float16 becomes float32 on a CPU: :func:`emostore.core.runtime.stored_precision`)."""
        cfg = config if isinstance(config, EncoderConfig) else cls.Config.from_dict(config)
        precision = getattr(cfg, "precision", None)
        if precision and precision != "auto":
            device = resolve_device(runtime.get("device", "auto"))
            cfg = dataclasses.replace(cfg, precision=stored_precision(precision, device))  # type: ignore[type-var]
        accepted = cls.runtime_options()
        return cls(cfg, name=name, **{k: v for k, v in runtime.items() if k in accepted})  # type: ignore[call-arg]

    @classmethod
    def create(cls: type[E], *, name: str | None = None, **options: Any) -> E:
        """Build from keyword options: configuration fields and runtime options alike."""
        runtime = {k: options.pop(k) for k in list(options) if k in cls.runtime_options()}
        return build_encoder(cls.modality, cls.kind, options, runtime, name=name, cls=cls)  # type: ignore[return-value]

    @property
    def spec(self) -> EncoderSpec:
        """What identifies this encoder in another process (see :class:`EncoderSpec`)."""
        return EncoderSpec(type(self), self.stored_config, self.name, dict(self.runtime))

    def rebuild(self) -> Encoder:
        """A fresh copy of this encoder (in a worker process, say), from its stored config."""
        return self.spec.build()

    @abstractmethod
    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        """Encode ``table.iloc[rows]``; ``table`` is the whole table (context encoders look around)."""

    def close(self) -> None:  # noqa: B027 - a hook: encoders without native resources need not override it
        """Release native resources (idempotent)."""

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class EncoderSpec:
    """How an encoder travels to another process (a ``--workers`` process, a Dask worker): either
    an encoder already built (its class, stored configuration, name and runtime options), or a
    request made from user options (``modality``, ``kind``, ``options``) that a worker builds
    while the main process builds the same. Picklable; :meth:`build` makes the encoder and
    :attr:`key` tells whether a process's encoder is this one."""

    cls: type[Encoder] | None = None
    config: dict[str, Any] | None = None
    name: str | None = None
    runtime: dict[str, Any] = field(default_factory=dict)
    request: tuple[str, str, dict[str, Any]] | None = None  # (modality, kind, options)

    @classmethod
    def requested(cls, modality: str, kind: str, options: Mapping[str, Any], runtime: Mapping[str, Any],
                  name: str | None) -> EncoderSpec:
        return cls(name=name, runtime=dict(runtime), request=(modality, kind, dict(options)))

    def build(self) -> Encoder:
        if self.request is not None:
            modality, kind, options = self.request
            return build_encoder(modality, kind, options, self.runtime, name=self.name)
        assert self.cls is not None and self.config is not None
        return self.cls.from_config(self.config, name=self.name, **self.runtime)

    @property
    def key(self) -> str:
        who = [self.cls.__module__, self.cls.__qualname__] if self.cls is not None else None
        return json.dumps([who, self.config, self.name, self.runtime, self.request], sort_keys=True, default=str)


# ----- registry --------------------------------------------------------------------------------
ENCODERS: dict[str, type[Encoder]] = {}
#: Encoder modules that could not be imported for want of an optional extra: module -> message.
UNAVAILABLE: dict[str, str] = {}
_discovered = False


def register(cls: type[E]) -> type[E]:
    """Class decorator: make ``cls`` available as ``<modality>/<kind>``."""
    ENCODERS[f"{cls.modality}/{cls.kind}"] = cls
    return cls


def discover() -> None:
    """Import every module of :mod:`emostore.extract.encoders` (once).

    A module that needs an optional package which is not installed is recorded with the extra
    to install; any other import error is a bug and propagates.
    """
    global _discovered
    if _discovered:
        return
    from emostore.extract import encoders

    for info in pkgutil.iter_modules(encoders.__path__):
        module = f"{encoders.__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            UNAVAILABLE[info.name] = f"needs {top}: pip install 'emostore[{EXTRAS[top]}]'"
    _discovered = True


def encoder_kinds(modality: str) -> list[str]:
    """Registered kinds of ``modality``, in registration order."""
    discover()
    return [key.split("/", 1)[1] for key, cls in ENCODERS.items() if cls.modality == modality]


def encoder_class(modality: str, kind: str) -> type[Encoder]:
    discover()
    key = f"{modality}/{kind}"
    if key not in ENCODERS:
        missing = "; ".join(f"{m} {why}" for m, why in UNAVAILABLE.items())
        raise UserError(f"unknown {modality} encoder {kind!r}; known: {', '.join(encoder_kinds(modality)) or 'none'}"
                        + (f" (not available: {missing})" if missing else ""))
    return ENCODERS[key]


def build_encoder(modality: str, kind: str, options: Mapping[str, Any] | None = None,
                  runtime: Mapping[str, Any] | None = None, *, name: str | None = None,
                  cls: type[Encoder] | None = None) -> Encoder:
    """A new encoder from user options (strings allowed) and runtime options; an option the
    encoder does not have is refused with the list of those it has."""
    cls = cls or encoder_class(modality, kind)
    config = cls.Config.from_options({k: v for k, v in (options or {}).items() if v is not None})
    given = {k: v for k, v in (runtime or {}).items() if v is not None}
    extra = sorted(set(given) - set(cls.runtime_options()))
    if extra:
        raise UserError(f"{modality} encoder {kind!r} does not take "
                        f"{', '.join('--' + e.replace('_', '-') for e in extra)}")
    return cls(config, name=name, **given)  # type: ignore[call-arg]


def rebuild_encoder(modality: str, config: Mapping[str, Any], *, name: str | None = None,
                    **runtime: Any) -> Encoder:
    """The encoder a feature set's stored ``config`` describes (its ``encoder`` key is the kind)."""
    kind = config.get("encoder")
    if not kind:
        raise UserError(f"a {modality} configuration without an encoder kind cannot be rebuilt: {dict(config)}")
    return encoder_class(modality, str(kind)).from_config(config, name=name, **runtime)


def describe_encoders() -> list[dict[str, Any]]:
    """Every registered encoder: modality, kind, summary, configuration defaults, runtime options."""
    discover()
    out = []
    order = {"text": 0, "audio": 1, "visual": 2}
    for cls in sorted(ENCODERS.values(), key=lambda c: order.get(c.modality, len(order))):
        doc = plain_summary(inspect.getdoc(cls) or "")
        defaults = cls.Config().to_dict()
        options = {k: defaults[k] for k in cls.Config.option_names()}
        out.append({"modality": cls.modality, "kind": cls.kind, "summary": doc, "options": options,
                    "runtime": cls.runtime_options()})
    return out + [{"module": m, "unavailable": why} for m, why in UNAVAILABLE.items()]
