"""Options shared by several commands, built once: from configuration dataclasses (the way
``HfArgumentParser`` builds arguments), and the few that are not a configuration's (device,
quiet, JSON output), with one helper for progress bars."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import typing
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Annotated, Any

import typer

from emostore.core.options import cli_meta

Json = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (nor epoch lines or cluster messages).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when present, then Apple MPS, else the CPU), cpu, cuda, "
                                          "cuda:1, mps.")]


#: For encoders, where the device is a runtime option of the encoder (None: its own default, auto).
OptionalDevice = Annotated[str | None, typer.Option(help="auto (CUDA when present, then Apple MPS, else the CPU), cpu, "
                                                         "cuda, cuda:1, mps [auto].")]


def progress_enabled(quiet: bool, as_json: bool = False) -> bool:
    """Whether a command shows progress bars: not asked to be quiet, not printing JSON, and
    stderr is a terminal."""
    return not quiet and not as_json and sys.stderr.isatty()


def _option(f: dataclasses.Field, hint: Any, default: Any, meta: dict[str, Any]) -> inspect.Parameter:
    """A keyword parameter whose annotation is the field's type with its ``typer.Option``."""
    if meta.get("choices"):  # an enumeration, so that --help lists the values and typer checks them
        hint = StrEnum(f.name.title().replace("_", ""), {c: c for c in meta["choices"]})
        default = hint(default)
    info = typer.Option(*meta["flags"], help=meta["help"], min=meta["min"], max=meta["max"], metavar=meta["metavar"])
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info])


def config_options(cls: type, *, into: str, skip: Iterable[str] = (), defaults: dict[str, Any] | None = None
                   ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one option per field of dataclass ``cls`` declared with
    :func:`emostore.core.options.option` (except ``skip``); the command receives the values as
    one ``cls`` instance, its parameter ``into``. ``defaults`` overrides a field's default for
    this command only."""
    skip, defaults = set(skip), defaults or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if cli_meta(f) is not None and f.name not in skip]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != into]
        added = []
        for f in fields:
            default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else f.default_factory())
            added.append(_option(f, hints[f.name], default, cli_meta(f)))  # type: ignore[arg-type]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {f.name: kwargs.pop(f.name) for f in fields if f.name in kwargs}
            values = {k: v.value if isinstance(v, StrEnum) else v for k, v in values.items()}
            kwargs[into] = cls(**values)
            return fn(*args, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + added)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in own + added}
        return wrapper

    return decorate
