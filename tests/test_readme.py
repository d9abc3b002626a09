"""Every command in the README's code blocks runs as printed.

The blocks are read in order. Each ``emostore`` line is parsed by the real command line (so an
unknown option, a bad value or a missing input file fails here); the lines that need only the
bundled sample and ``../shared`` then run, in order, in a scratch directory laid out like a
checkout (``emostore/sample`` and ``../shared`` reachable as the README writes them). The lines
that cannot run here are listed with the reason (a corpus or file that is not here, a GPU, a model
hub, a server that runs until stopped).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from conftest import SHARED
from typer.testing import CliRunner

from emostore.cli import app

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
#: Lines that cannot run here, by a substring that identifies them, and why.
CANNOT_RUN = {
    "/data/": "a corpus that is not in ../shared",
    "my_corpus.csv": "the reader's own file",
    "train.csv dev.csv test.csv": "the reader's own files",
    "clip.wav": "the reader's own file",
    "fine.wav": "the reader's own file",
    "ckpt/fused": "a checkpoint the reader trains on their own corpus",
    "--device cuda": "needs a GPU",
    "all-mpnet-base-v2": "a model hub (no network here)",
    "--model roberta": "a model hub (no network here)",
    "stores/big": "a store of millions of rows",
    "stores/iemocap": "a corpus that is not in ../shared",
    "emostore serve": "runs until stopped",
    "--shard 0/4": "four processes at once, shown as a pattern",
    "stores/fer2013 --feature-set fer": "minutes: 35,887 images",
}


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
        pending += line.rstrip("\\").rstrip() + " "
        if not line.rstrip().endswith("\\"):
            out.append((start, pending.strip()))
            pending = ""
    return out


def skip_reason(command: str) -> str | None:
    return next((why for key, why in CANNOT_RUN.items() if key in command), None)


def emostore_args(command: str) -> list[str] | None:
    words = shlex.split(command, comments=True)
    return words[1:] if words and words[0] == "emostore" else None


def parse_only(args: list[str]) -> None:
    """Parse ``args`` with the real command line (options, types, choices) without running it."""
    cmd = typer.main.get_command(app)
    ctx = cmd.make_context("emostore", list(args), resilient_parsing=False)
    while hasattr(cmd, "resolve_command") and ctx.protected_args + ctx.args:
        _, cmd, rest = cmd.resolve_command(ctx, ctx.protected_args + ctx.args)
        ctx = cmd.make_context(cmd.name, rest, parent=ctx, resilient_parsing=False)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"real data not available: {SHARED} is missing (see ../shared/README.md)")
    base = tmp_path_factory.mktemp("readme")
    (base / "shared").symlink_to(SHARED.parent)
    work = base / "checkout"
    (work / "emostore").mkdir(parents=True)
    (work / "emostore" / "sample").symlink_to(ROOT / "emostore" / "sample")
    return work


def test_readme_commands_parse_and_run(workdir, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    runner = CliRunner()
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) > 30
    ran, skipped = [], []
    for no, command in commands:
        if command.startswith(("make ", "curl ", "cd ", "git ")) or "import zarr" in command:
            continue
        args = emostore_args(command)
        assert args is not None, f"README line {no}: not an emostore command: {command}"
        why = skip_reason(command)
        if why:
            parse_only(args)
            skipped.append((no, why))
            continue
        r = runner.invoke(app, args, catch_exceptions=False)
        assert r.exit_code == 0, f"README line {no}: `{command}` exited {r.exit_code}:\n{r.output[-3000:]}"
        ran.append(no)
    assert len(ran) >= 20, (ran, skipped)
    for no, why in skipped:
        print(f"README line {no} not run: {why}")


def test_readme_lines_are_found() -> None:
    text = "x\n```bash\nemostore a \\\n  --b 1   # note\nemostore c\n```\n```python\nimport zarr\n```\n"
    assert readme_commands(text) == [(3, "emostore a --b 1 # note"), (5, "emostore c")]
    assert emostore_args("emostore a --b 1 # note") == ["a", "--b", "1"]
    assert re.search("runs until stopped", str(skip_reason("emostore serve ckpt/x")))
