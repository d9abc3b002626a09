"""Values from the command line (``-p KEY=VALUE``) or from JSON, as the type a field declares.
Encoder configurations and head hyperparameters both read their options through :func:`convert`."""

from __future__ import annotations

import types
import typing
from typing import Any

from emostore.errors import UserError


def convert(value: Any, kind: Any, where: str) -> Any:
    """``value`` (often a string from the command line) as type ``kind``: bool, int, float, str,
    ``X | None`` (``none`` or empty is None) and ``list[X]`` (comma-separated)."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return convert(value, a, where)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    if typing.get_origin(kind) is list:
        items = value.split(",") if isinstance(value, str) else list(value)
        return [convert(v.strip() if isinstance(v, str) else v, args[0] if args else str, where) for v in items]
    if kind is Any:
        return value
    if not isinstance(value, str):  # a JSON value: numbers take the field's numeric type
        return kind(value) if kind in (int, float) and isinstance(value, (int, float)) and \
            not isinstance(value, bool) else value
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: cannot read {value!r} as {getattr(kind, '__name__', kind)}") from None
