"""``EMOSTORE_REQUIRE_DATA=1`` (CI): what a test needs but does not find fails instead of skipping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

TESTS = Path(__file__).resolve().parent


def test_missing_data_and_extras_skip_or_fail(monkeypatch):
    monkeypatch.setattr(conftest, "REQUIRE_DATA", False)
    with pytest.raises(pytest.skip.Exception, match="no_such_folder is missing"):
        conftest.shared_data("no_such_folder")
    with pytest.raises(pytest.skip.Exception, match=r"pip install 'emostore\[audio\]'"):
        conftest.optional("emostore_no_such_module", "audio")
    monkeypatch.setattr(conftest, "REQUIRE_DATA", True)
    with pytest.raises(pytest.fail.Exception, match="no_such_folder is missing .*EMOSTORE_REQUIRE_DATA=1"):
        conftest.shared_data("no_such_folder")
    with pytest.raises(pytest.fail.Exception, match="no_such_model.task is missing"):
        conftest.shared_model("no_such_model.task")
    with pytest.raises(pytest.fail.Exception, match="emostore_no_such_module cannot be imported"):
        conftest.optional("emostore_no_such_module", "audio")
    assert conftest.optional("json", "dev") is json  # what is there is simply imported


@pytest.mark.slow
def test_a_module_that_needs_an_absent_extra_fails_the_run_in_ci_mode(tmp_path):
    """A test module whose extra is absent: skipped in a plain run, a failed run under EMOSTORE_REQUIRE_DATA=1."""
    (tmp_path / "test_needs_extra.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import optional\n"
        "optional('emostore_no_such_module', 'audio')\n\ndef test_x():\n    pass\n")
    (tmp_path / "test_other.py").write_text("def test_y():\n    pass\n")

    def run(require: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "EMOSTORE_REQUIRE_DATA": require}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    plain = run("0")
    assert plain.returncode == 0 and "1 passed, 1 skipped" in plain.stdout, plain.stdout
    required = run("1")
    assert required.returncode != 0, required.stdout
    assert "emostore_no_such_module cannot be imported" in required.stdout
    assert "EMOSTORE_REQUIRE_DATA=1" in required.stdout
