"""Timestamps written into stores, checkpoints and model folders."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")
