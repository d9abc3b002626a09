"""The corpora of the scale benchmark: MELD dialogues recombined under new ids, and vectors
derived from real ones beyond what the encoder is run on.

A corpus of N rows is a sequence of dialogues, each a real MELD dialogue (train, dev or test,
drawn at random) with its turns in order, its speakers, emotions and sentiments, under a new
dialogue id (``c<k>``) and new utterance ids (``c<k>_u<t>``); it keeps its MELD split, so the
splits keep MELD's proportions. The last dialogue is cut at N rows.

Derived vectors (sizes above what the real encoder is run on) follow ``bench/search_speed.py``:
each row starts from the real all-MiniLM-L6-v2 vector of its own utterance text and is moved by
up to that vector's nearest-neighbour distance, in a random direction within the span of the
directions to its 10 nearest real neighbours, then L2-normalised: new sentences near the real
one, so labels still mean something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MELD_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
COLUMNS = ["id", "dialogue", "turn", "speaker", "text", "emotion", "sentiment", "split"]
#: Rows written to the CSV per block.
BLOCK = 250_000


def read_meld(meld: Path) -> pd.DataFrame:
    """All MELD utterances (text, labels, split, dialogue, turn), in dialogue and turn order."""
    parts = []
    for split, name in MELD_FILES.items():
        raw = pd.read_csv(meld / name, dtype=str, keep_default_na=False)
        parts.append(pd.DataFrame({
            "key": split + "/" + raw["Dialogue_ID"], "turn": raw["Utterance_ID"].astype(int),
            "speaker": raw["Speaker"], "text": raw["Utterance"], "emotion": raw["Emotion"],
            "sentiment": raw["Sentiment"], "split": split}))
    meld_rows = pd.concat(parts, ignore_index=True)
    return meld_rows.sort_values(["key", "turn"], kind="stable").reset_index(drop=True)


def dialogue_plan(meld_rows: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """``[n]`` MELD row of each corpus row, and the corpus dialogue of each (``[2, n]``)."""
    starts = np.flatnonzero(np.r_[True, meld_rows["key"].to_numpy()[1:] != meld_rows["key"].to_numpy()[:-1]])
    lengths = np.diff(np.r_[starts, len(meld_rows)])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(starts), int(n / lengths.mean() * 1.2) + 16)
    while lengths[draws].sum() < n:
        draws = np.r_[draws, rng.integers(0, len(starts), len(draws))]
    take = lengths[draws]
    dialogue = np.repeat(np.arange(len(draws)), take)[:n]
    offset = np.arange(len(dialogue)) - np.repeat(np.cumsum(take) - take, take)[:n]
    return np.stack([np.repeat(starts[draws], take)[:n] + offset, dialogue])


def write_corpus(meld: Path, n: int, out: Path, seed: int = 0) -> Path:
    """Write the corpus of ``n`` rows as a CSV for ``emostore ingest csv`` (atomically)."""
    meld_rows = read_meld(meld)
    rows, dialogue = dialogue_plan(meld_rows, n, seed)
    tmp = out.with_suffix(".partial")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        for s in range(0, n, BLOCK):
            r, d = rows[s:s + BLOCK], dialogue[s:s + BLOCK]
            src = meld_rows.iloc[r]
            turn = src["turn"].to_numpy()
            dia = np.char.add("c", d.astype(str))
            block = pd.DataFrame({
                "id": np.char.add(np.char.add(dia, "_u"), turn.astype(str)), "dialogue": dia, "turn": turn,
                "speaker": src["speaker"].to_numpy(), "text": src["text"].to_numpy(),
                "emotion": src["emotion"].to_numpy(), "sentiment": src["sentiment"].to_numpy(),
                "split": src["split"].to_numpy()})
            block.to_csv(fh, header=s == 0, index=False)
    tmp.replace(out)
    return out


class Deriver:
    """Derived vectors for texts, from the real vectors of MELD's distinct texts (see the module)."""

    def __init__(self, texts: list[str], vectors: np.ndarray, k: int = 10):
        from emostore.search.index import NearestIndex, normalise

        self.normalise = normalise
        self.index = {t: i for i, t in enumerate(texts)}
        self.base = normalise(np.asarray(vectors, np.float32))
        flat = NearestIndex.build(self.base, np.arange(len(self.base)))
        sims, self.nbrs = flat.search(self.base, k + 1)
        self.nn = np.sqrt(np.maximum(0.0, 2 - 2 * sims[:, 1])).astype(np.float32)

    def vectors(self, texts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        which = np.array([self.index[t] for t in texts])
        base = self.base[which]
        dirs = self.base[self.nbrs[which, 1:]] - base[:, None, :]
        dirs /= np.maximum(np.linalg.norm(dirs, axis=2, keepdims=True), 1e-12)
        step = np.einsum("mk,mkd->md", rng.standard_normal(dirs.shape[:2]).astype(np.float32), dirs)
        step /= np.maximum(np.linalg.norm(step, axis=1, keepdims=True), 1e-12)
        length = self.nn[which] * rng.random(len(which), dtype=np.float32)
        return self.normalise(base + step * length[:, None]).astype(np.float32)


def real_text_vectors(meld: Path, work: Path) -> tuple[list[str], np.ndarray]:
    """MELD's distinct texts and their real all-MiniLM-L6-v2 vectors (encoded once, cached)."""
    cache = work / "meld_text_vectors.npz"
    if cache.exists():
        saved = np.load(cache, allow_pickle=False)
        return [str(t) for t in saved["texts"]], saved["vectors"]
    from emostore.extract.encoders.text import text_encoder

    texts = sorted(set(read_meld(meld)["text"]))
    vectors = text_encoder("minilm", device="cpu").model.encode(texts, batch_size=64, convert_to_numpy=True)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, texts=np.array(texts), vectors=vectors.astype(np.float32))
    return texts, vectors.astype(np.float32)


def write_derived(store_path: Path, meld: Path, work: Path, seed: int = 0, progress: bool = True) -> None:
    """Fill ``text/minilm`` of the store with derived vectors (the encoder's configuration, so
    checkpoints trained on it predict new text with the real encoder); resumes pending chunks."""
    from rich.progress import Progress

    from emostore.extract.encoders.text import text_encoder
    from emostore.store import Store

    store = Store.open(store_path)
    enc = text_encoder("minilm", device="cpu", precision="float32")  # as the real extraction of the smaller sizes
    fs = store.create_feature_set(enc.feature_set, dim=enc.dim, config=enc.stored_config, encoder=enc.kind,
                                  version=enc.version(), chunk_rows=enc.chunk_rows)
    store.root.attrs["vectors"] = "derived"
    deriver = Deriver(*real_text_vectors(meld, work))
    text = store.root["table"]["text"]
    pending = fs.pending_chunks()
    with Progress(disable=not progress) as bar:
        task = bar.add_task("derived vectors", total=len(pending))
        for chunk in pending:
            sl = fs.chunk_slice(chunk)
            texts = np.asarray(text[sl], dtype=object)
            rng = np.random.default_rng([seed, chunk])
            n = sl.stop - sl.start
            fs.write_chunk(chunk, deriver.vectors(texts, rng), np.ones(n, bool), [""] * n)
            bar.advance(task)
    store.touch_feature_set("text/minilm")


def write_table_in_blocks(csv: Path, store_path: Path, n: int, rows_per_block: int = 1_000_000) -> None:
    """The store of a corpus too large for ``ingest`` on this machine: the CSV read a block at a time,
    each block made into table rows by the same CSV adapter as ``ingest csv``, written one after the
    other (``Store.create`` with blocks), so no more than one block is in memory."""
    import tempfile

    from emostore.ingest.base import get_adapter
    from emostore.store import Store

    def blocks():  # type: ignore[no-untyped-def]
        with tempfile.TemporaryDirectory() as tmp:
            for k, raw in enumerate(pd.read_csv(csv, dtype=str, keep_default_na=False, chunksize=rows_per_block)):
                piece = Path(tmp) / f"block{k}.csv"
                raw.to_csv(piece, index=False)
                yield get_adapter("csv").load([piece], dataset="meld-recombined").table
                piece.unlink()

    Store.create(store_path, blocks(), dataset="meld-recombined", overwrite=True, n_rows=n,
                 table_attrs={"adapter": "csv", "source": [str(csv)], "problems": [], "repairs": [],
                              "notes": [f"written in blocks of {rows_per_block:,} rows"], "meta": {}})
