"""Every ``emostore`` command in the README's code blocks parses with the real command line, and every
input path it names exists.

Each shell line of the README's bash blocks is read (continuations joined, comments dropped) and
given to the real command line's parser: an unknown command or option, a bad value or a choice the
registries do not offer fails here, with the README line. Then every input path is checked, in a
scratch directory laid out like a checkout (``emostore/sample`` and ``../shared`` reachable as the
README writes them). The rule:

- a path is a value of a parameter typed ``Path`` (a file or folder argument or option) or of a
  ``store`` parameter; ``--model`` (a model name or a folder) and ``QUERY`` (a text or a file) are
  not checked;
- it is an *output* when its parameter is one of ``OUTPUTS`` (``--out``, ``--report``, ``--csv``,
  ``--plot``, ``--dir``), an *input* otherwise;
- an input must exist, or lie at or under an output of a README command (``stores/meld`` is
  ``ingest ... --out stores/meld``'s; the README is a reference, so that command may stand in a later
  section), or be a URL (``s3://...``), or stand on a line listed in ``READERS_OWN`` (the reader's
  own corpora and recordings).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
from conftest import REQUIRE_DATA, SHARED

from emostore.cli import app

ROOT = Path(__file__).resolve().parents[1]
#: Parameters that name what a command writes.
OUTPUTS = frozenset({"out", "report", "csv_out", "plot", "directory"})
#: Input files and folders that only the reader has (their own corpora, recordings and models): a path
#: that is one of these or lies under one.
READERS_OWN = ("/data", "my_corpus.csv", "corpus.csv", "train.csv", "dev.csv", "test.csv", "std_folds.json",
               "stores/big", "fine.wav", "call.wav", "call_words.csv", "clip.mp4", "meeting.mp4")


def readme_commands(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every shell line in the README's bash blocks."""
    out, block, start, pending = [], False, 0, ""
    for no, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            block = line.strip() in ("```bash", "```sh", "```shell")
            continue
        if not block or not line.strip():
            continue
        if not pending:
            start = no
        pending += line.strip().rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            out.append((start, pending.strip()))
            pending = ""
    return out


def emostore_args(command: str) -> list[list[str]]:
    """The arguments of each ``emostore`` command in a shell line (commands joined by ``&``, ``;``, ``|``)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    out, words = [], []
    for word in [*lexer, ";"]:
        if word and set(word) <= set("&;|"):
            if words and words[0] == "emostore":
                out.append(words[1:])
            words = []
        else:
            words.append(word)
    return out


def parse_only(args: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse ``args`` with the real command line (commands, options, types, choices) without running it:
    the command's name and its parameters' values."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("emostore", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):  # a group: the rest is its subcommand's
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # what the group leaves to its subcommand
        if not rest:
            break
        _, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None
        cmd, ctx = sub, sub.make_context(sub.name, rest, parent=ctx, resilient_parsing=False)
    return ctx.command_path, ctx.params


def paths(params: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(inputs, outputs)``: the paths among a command's parameter values (see the module's rule)."""
    inputs, outputs = [], []
    for name, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        if name in OUTPUTS:  # a folder, or a store that may be a URL (a string)
            outputs.extend(str(v) for v in values if isinstance(v, Path | str))
        else:
            inputs.extend(str(v) for v in values if isinstance(v, Path) or (name == "store" and isinstance(v, str)))
    return inputs, outputs


def under_any(path: str, folders: list[str]) -> bool:
    """``path`` is one of ``folders`` or lies under one."""
    p = Path(os.path.normpath(path))
    return any(p == w or w in p.parents for w in map(Path, map(os.path.normpath, folders)))


def missing_inputs(inputs: list[str], written: list[str]) -> list[str]:
    """The inputs the rule above does not accept."""
    known = [*written, *READERS_OWN]
    return [p for p in inputs if "://" not in p and not Path(p).exists() and not under_any(p, known)]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A directory where ``emostore/sample/...`` and ``../shared/...`` resolve as in a checkout."""
    work = tmp_path / "checkout"
    (work / "emostore").mkdir(parents=True)
    (work / "emostore" / "sample").symlink_to(ROOT / "emostore" / "sample")
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED.parent)
    monkeypatch.chdir(work)
    return work


def test_readme_commands_parse_and_their_inputs_exist(checkout) -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    parsed, written, errors = [], [], []
    for no, command, args in [(no, c, a) for no, c in commands for a in emostore_args(c)]:
        try:
            _, params = parse_only(args)
        except typer.TyperException as exc:  # typer's click: an unknown command or option, a bad value
            errors.append(f"README line {no}: `{command}`: {exc}")
            continue
        inputs, outputs = paths(params)
        parsed.append((no, command, inputs))
        written.extend(outputs)
    checked = 0
    for no, command, inputs in parsed:
        if "../shared" in command and not SHARED.is_dir() and not REQUIRE_DATA:
            inputs = [p for p in inputs if not p.startswith("../shared")]  # checked where ../shared is
        for path in missing_inputs(inputs, written):
            errors.append(f"README line {no}: `{command}`: {path} does not exist and no README command writes it")
        checked += len(inputs)
    assert not errors, "\n".join(errors)
    assert len(parsed) > 40, f"only {len(parsed)} README commands parsed"
    assert checked > 40, f"only {checked} input paths checked"


def test_the_input_rule() -> None:
    """The rule catches a wrong path, and accepts what exists or what a README command writes."""
    _, params = parse_only(["train", "stores/x", "--features", "text/minilm", "--out", "ckpt/x"])
    assert paths(params) == (["stores/x"], ["ckpt/x"])
    _, params = parse_only(["ingest", "csv", "a.csv", "b.csv", "--out", "stores/x", "--media-root", "media"])
    assert sorted(paths(params)[0]) == ["a.csv", "b.csv", "media"] and paths(params)[1] == ["stores/x"]
    assert missing_inputs(["stores/x"], []) == ["stores/x"]
    assert missing_inputs(["stores/x/"], ["stores/x"]) == []
    assert missing_inputs(["./stores/x/sub"], ["stores/x"]) == []
    assert missing_inputs(["stores/xy"], ["stores/x"]) == ["stores/xy"]
    assert missing_inputs(["s3://bucket/x"], []) == []
    assert missing_inputs(["my_corpus.csv"], []) == []  # the reader's own
    assert missing_inputs(["../shared/data/cmu_mosy"], []) != []
    assert missing_inputs([str(ROOT / "tests")], []) == []  # it exists


def test_readme_lines_are_found() -> None:
    text = "x\n```bash\nemostore a \\\n  --b 1   # note\nemostore c\n```\n```python\nimport zarr\n```\n"
    assert readme_commands(text) == [(3, "emostore a --b 1   # note"), (5, "emostore c")]
    assert emostore_args("emostore a --b 1 # note") == [["a", "--b", "1"]]
    assert emostore_args("emostore a 'x y' & emostore b; ls | emostore c") == [["a", "x y"], ["b"], ["c"]]


def test_a_wrong_option_fails_to_parse() -> None:
    with pytest.raises(typer.TyperException, match="No such option"):
        parse_only(["train", "stores/x", "--no-such-option"])
    with pytest.raises(typer.TyperException, match="No such command"):
        parse_only(["no-such-command"])
    with pytest.raises(typer.BadParameter):
        parse_only(["index", "build", "stores/x", "--kind", "nope"])


def make_targets(makefile: str) -> dict[str, list[str]]:
    """Each target of a Makefile with its recipe lines."""
    targets: dict[str, list[str]] = {}
    current: list[str] = []
    for line in makefile.splitlines():
        if line.startswith("\t"):
            current.append(line.strip())
        elif ":" in line and not line.startswith(("#", ".", " ")) and "=" not in line.split(":")[0]:
            current = targets.setdefault(line.split(":")[0].strip(), [])
    return targets


def test_readme_make_targets_exist_and_test_fast_leaves_out_slow() -> None:
    targets = make_targets((ROOT / "Makefile").read_text())
    named = {cmd.split()[1] for _, cmd in readme_commands((ROOT / "README.md").read_text())
             if cmd.startswith("make ")}
    assert {"test", "test-fast"} <= named and named <= set(targets)
    assert targets["test"] == ["$(BIN)/python -m pytest -q"]
    assert targets["test-fast"] == ['$(BIN)/python -m pytest -q -m "not slow"']
