"""Every ``emostore`` command in the README's code blocks parses with the real command line.

Each shell line of the README's bash blocks is read (continuations joined, comments dropped) and
given to the real command line's parser: an unknown command or option, a bad value or a choice the
registries do not offer fails here, with the README line. Input files are checked too, in a scratch
directory laid out like a checkout (``emostore/sample`` and ``../shared`` reachable as the README
writes them), except on the lines listed in ``READERS_OWN`` (files only the reader has).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import typer
from conftest import SHARED

from emostore.cli import app

ROOT = Path(__file__).resolve().parents[1]
#: Lines whose input files only the reader has, by a substring that identifies them.
READERS_OWN = ("/data/", "my_corpus.csv", "train.csv dev.csv test.csv", "clip.wav", "clip.mp4", "fine.wav",
               "ckpt/", "stores/", "./models/", "face.jpg", "photo.jpg")


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


def parse_only(args: list[str]) -> None:
    """Parse ``args`` with the real command line (commands, options, types, choices) without running it."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("emostore", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command"):  # a group: the rest is its subcommand's
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]  # what the group leaves to its subcommand
        if not rest:
            break
        _, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None
        cmd, ctx = sub, sub.make_context(sub.name, rest, parent=ctx, resilient_parsing=False)


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


def test_readme_commands_parse(checkout) -> None:
    commands = readme_commands((ROOT / "README.md").read_text())
    parsed, errors = 0, []
    for no, command, args in [(no, c, a) for no, c in commands for a in emostore_args(c)]:
        try:
            parse_only(args)
        except typer.BadParameter as exc:
            missing = "does not exist" in exc.format_message()
            if missing and (any(k in command for k in READERS_OWN) or ("../shared" in command and not SHARED.is_dir())):
                continue  # a file only the reader (or a machine with ../shared) has; the rest was parsed
            errors.append(f"README line {no}: `{command}`: {exc.format_message()}")
            continue
        except typer.TyperException as exc:  # typer's click: an unknown command or option, a bad usage
            errors.append(f"README line {no}: `{command}`: {exc}")
            continue
        parsed += 1
    assert not errors, "\n".join(errors)
    assert parsed > 40, f"only {parsed} README commands parsed"


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
