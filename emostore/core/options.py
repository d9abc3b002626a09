"""Command-line options declared where the value lives: a dataclass field of a configuration
(``TrainConfig``, ``FinetuneOptions``, an encoder's ``Config``) carries its help text and limits in
its metadata, and the command line builds its options from them (:mod:`emostore.cli_options`),
so that a default is written once and the commands cannot drift apart."""

from __future__ import annotations

from dataclasses import MISSING, Field, field
from typing import Any

KEY = "cli"


def option(default: Any = MISSING, *, help: str, flags: tuple[str, ...] = (), min: float | None = None,
           max: float | None = None, metavar: str | None = None, choices: tuple[str, ...] | None = None,
           default_factory: Any = MISSING) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes`` unless
    ``flags`` names it otherwise; ``choices``: the values it takes)."""
    meta = {KEY: {"help": help, "flags": flags, "min": min, "max": max, "metavar": metavar, "choices": choices}}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def cli_meta(f: Field) -> dict[str, Any] | None:
    """The option's description, for fields declared with :func:`option` (None otherwise)."""
    return f.metadata.get(KEY)
