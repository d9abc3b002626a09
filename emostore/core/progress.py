"""The one progress bar of every long command (rich): a description, the bar, done of total,
elapsed and remaining time. Off when not asked for (``--quiet``, ``--json``, no terminal)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar(*, enabled: bool, transient: bool = False, counts: str | None = None, eta: bool = True,
                 stderr: bool = False) -> Progress:
    """A rich ``Progress``; ``counts``: a text column (e.g. with a task field) instead of done/total."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(),
               TextColumn(counts) if counts else MofNCompleteColumn(), TimeElapsedColumn()]
    if eta:
        columns.append(TimeRemainingColumn())
    return Progress(*columns, disable=not enabled, transient=transient,
                    **({"console": Console(stderr=True)} if stderr else {}))
