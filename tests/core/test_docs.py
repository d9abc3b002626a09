"""Docstrings shown by ``emostore list`` are plain text."""

from __future__ import annotations

from typer.testing import CliRunner

from emostore.cli import app
from emostore.core.docs import plain_summary


def test_plain_summary_drops_the_label_and_rst_markup() -> None:
    doc = ("``svm``: a head (see :mod:`emostore.heads.classical`, :func:`~emostore.heads.fit`) with\n"
           "``C`` chosen by ``-p C_grid``.\n\nSecond paragraph.")
    assert plain_summary(doc) == ("a head (see emostore.heads.classical, fit) with C chosen by -p C_grid.")


def test_list_shows_no_rst_markup() -> None:
    r = CliRunner().invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    assert "``" not in r.output and ":mod:" not in r.output and ":class:" not in r.output
    assert "(bert, roberta, distilbert or any name/path)" in r.output
