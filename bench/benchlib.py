"""What the benchmark scripts share: the machine line and writing one section of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{os.cpu_count()} cores ({cpu_name()})"


def write_section(title: str, text: str) -> None:
    """Replace (or append) the section headed ``title`` in BENCHMARKS.md; ``text`` gets the heading
    when it does not start with it."""
    if not text.lstrip().startswith(title):
        text = f"{title}\n\n{text.lstrip()}"
    path = ROOT / "BENCHMARKS.md"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    start = current.find(title)
    if start >= 0:
        end = current.find("\n## ", start + 1)
        current = current[:start] + (current[end + 1:] if end >= 0 else "")
    path.write_text(current.rstrip() + "\n\n" + text.rstrip() + "\n")


def emodb_store(feature_sets: tuple[str, ...] = ("egemaps", "compare")):  # type: ignore[no-untyped-def]
    """Emo-DB from ../shared (535 utterances, 10 speakers) as ``bench/out/emodb``, with these openSMILE
    feature sets extracted (once; later calls reuse the store)."""
    from emostore.extract.encoders.opensmile import OpenSmileEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest
    from emostore.store import Store

    out, shared = ROOT / "bench" / "out", ROOT.parent / "shared" / "data"
    path = out / "emodb"
    if not (path / "zarr.json").exists():
        labels = (shared / "emodb" / "labels.csv").read_text().splitlines()
        rows = ["id,speaker,emotion,media,split"]
        for line in labels[1:]:
            f, spk, _, emo, *_ = line.split(",")
            rows.append(f"{Path(f).stem},{spk},{emo},{shared / 'emodb' / 'wav' / f},train")
        out.mkdir(parents=True, exist_ok=True)
        csv = out / "emodb.csv"
        csv.write_text("\n".join(rows) + "\n")
        ingest("csv", [csv], path, dataset="emodb")
    store = Store.open(path)
    for fs in feature_sets:
        run_extraction(store, OpenSmileEncoder.create(feature_set=fs), workers=2, progress=False)
    return store
