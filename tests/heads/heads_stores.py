"""Stores the heads tests share, each built once per test session (see the fixtures in each module).

Small real subsets keep the run short: the first dialogues of each MELD split, and CMU-MOSI
whole (2199 segments). ``partial`` adds to the MELD subset a second feature set (embeddings of the
first 16 tokens) that is missing for about a third of the rows, as a modality would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import shared_data

#: Dialogues taken from the start of each MELD split.
MELD_DIALOGUES = {"train": 110, "dev": 30, "test": 45}
_cache: dict[str, Any] = {}


def meld_subset_csvs(out: Path) -> Path:
    from emostore.ingest.meld import CSV_FILES

    root = shared_data("meld")
    out.mkdir(parents=True, exist_ok=True)
    for split, name in CSV_FILES.items():
        raw = pd.read_csv(root / name)
        keep = raw["Dialogue_ID"].isin(sorted(raw["Dialogue_ID"].unique())[: MELD_DIALOGUES[split]])
        raw[keep].to_csv(out / name, index=False)
    return out


def meld_store(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Any:
    """The MELD subset with ``text/minilm``."""
    if "meld" not in _cache:
        from emostore.extract.runner import run_extraction
        from emostore.ingest.run import ingest

        base = tmp_path_factory.mktemp("meld")
        store, _ = ingest("meld", meld_subset_csvs(base / "csv"), base / "store")
        run_extraction(store, encoder, progress=False)
        _cache["meld"] = store
    return _cache["meld"]


def sample_store(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Any:
    """The bundled sample (385 utterances, 60 dialogues) with ``text/minilm``: always available."""
    if "sample" not in _cache:
        from emostore.extract.runner import run_extraction
        from emostore.ingest.run import ingest

        sample = Path(__file__).resolve().parents[2] / "emostore" / "sample" / "dialogues.csv"
        store, _ = ingest("csv", [sample], tmp_path_factory.mktemp("sample") / "store", dataset="sample")
        run_extraction(store, encoder, progress=False)
        _cache["sample"] = store
    return _cache["sample"]


#: The text stores guarantees are tested on: the bundled sample everywhere, MELD where ../shared has it.
BASES = {"sample": sample_store, "meld": meld_store}


def partial_store(tmp_path_factory: pytest.TempPathFactory, encoder: Any, base: str = "meld") -> Any:
    """A copy of a base store (the MELD subset, or the sample) plus ``text/partial``: embeddings of
    the first 16 tokens, missing (masked, NaN) for a random third of the rows."""
    if f"partial-{base}" not in _cache:
        import shutil

        from emostore.extract.encoders.text import text_encoder
        from emostore.store import Store

        src = BASES[base](tmp_path_factory, encoder)
        path = tmp_path_factory.mktemp("partial") / "store"
        shutil.copytree(src.path, path)
        store = Store.open(path)
        ctx = text_encoder("minilm", device="cpu", batch_size=64, max_length=16)
        fs = store.create_feature_set("text/partial", dim=ctx.dim, config={**ctx.stored_config, "dropped": "1/3"},
                                      encoder=ctx.kind, version=ctx.version())
        missing = np.random.default_rng(0).random(len(store)) < 1 / 3
        for chunk in range(fs.n_chunks):
            sl = fs.chunk_slice(chunk)
            rows = np.arange(sl.start, sl.stop)
            out = ctx.encode_rows(store.table, rows)
            ok = out.ok & ~missing[rows]
            fs.write_chunk(chunk, out.values, ok, ["modality missing" if not g else "" for g in ok])
        _cache[f"partial-{base}"] = store
    return _cache[f"partial-{base}"]


def mosi_store(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Any:
    """CMU-MOSI (standard folds) with ``text/minilm``."""
    if "mosi" not in _cache:
        from emostore.extract.runner import run_extraction
        from emostore.ingest.run import ingest

        store, _ = ingest("mosi", shared_data("cmu_mosi"), tmp_path_factory.mktemp("mosi") / "store")
        run_extraction(store, encoder, progress=False)
        _cache["mosi"] = store
    return _cache["mosi"]


def majority_weighted_f1(data: Any, split: str = "test") -> float:
    """Weighted F1 of always predicting the most frequent training label."""
    from sklearn.metrics import f1_score

    y = data.y.cpu().numpy()
    majority = np.bincount(y[data.rows("train")]).argmax()
    truth = y[data.rows(split)]
    return float(f1_score(truth, np.full_like(truth, majority), average="weighted", zero_division=0))
