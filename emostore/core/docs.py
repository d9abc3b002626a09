"""Docstrings shown to users (``emostore list``) as plain text."""

from __future__ import annotations

import re


def plain_summary(doc: str) -> str:
    """The first paragraph of a docstring on one line, without the ``name``: label it may start with and
    without reStructuredText markup: ``x`` and :role:`x` become x (:role:`~a.b.x` becomes x)."""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r"^``[\w/-]+``:\s*", "", text)
    text = re.sub(r":[\w:]+:`~[^`]*?([^.`]+)`", r"\1", text)
    text = re.sub(r":[\w:]+:`([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)
