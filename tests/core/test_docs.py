"""``emostore list`` shows plain text: docstrings without markup, defaults as they are typed."""

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


def test_list_shows_defaults_as_they_are_typed_not_python_reprs() -> None:
    import re

    r = CliRunner().invoke(app, ["list"])
    options = [line for line in r.output.splitlines() if line.startswith("    -p ")]
    assert options and not re.search(r"=(True|False|None)\b|[{}\[\]]", "\n".join(options))
    assert any("causal=false" in line and "speaker_attention=true" in line for line in options)
    assert any("max_length=none" in line for line in options)
    from emostore.core.convert import convert

    assert convert("false", bool, "causal") is False and convert("none", int | None, "max_length") is None
