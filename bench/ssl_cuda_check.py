"""The SSL speech encoder on CUDA in float16 against the CPU in float32 (a check for a GPU machine).

Builds a random WavLM-sized model (12 layers, hidden 768, the wav2vec 2.0 convolutions; or
``--model`` for a real one), extracts the sample's 42 speech files with ``--device cuda``
(float16 by default) and with ``--device cpu``, and reports the largest relative difference of the
pooled vectors, the cosine similarity per utterance and the time of each run.

    python bench/ssl_cuda_check.py [--model microsoft/wavlm-base-plus]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def random_model(folder: Path) -> Path:
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    torch.manual_seed(0)
    WavLMModel(WavLMConfig()).eval().save_pretrained(folder)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(folder)
    return folder


def main() -> None:
    import torch
    from conftest import sample_with_audio_csv

    from emostore.extract.encoders.ssl import SSLEncoder
    from emostore.extract.runner import run_extraction
    from emostore.ingest.run import ingest

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="a real model folder or hub name (default: a random WavLM-sized model)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine")
    work = Path(tempfile.mkdtemp(prefix="emostore-ssl-cuda-"))
    model = args.model or str(random_model(work / "wavlm"))
    results = {}
    for device in ("cuda", "cpu"):
        store, _ = ingest("csv", [sample_with_audio_csv(work)], work / f"store-{device}", dataset="sample")
        enc = SSLEncoder.create(model=model, layers="all", device=device)
        t = time.perf_counter()
        run_extraction(store, enc, progress=False)
        seconds = time.perf_counter() - t
        _, X, mask = store.read(enc.feature_set)
        results[device] = (X[mask], seconds, enc.config.precision)
    gpu, cpu = results["cuda"][0], results["cpu"][0]
    cos = (gpu * cpu).sum(1) / (np.linalg.norm(gpu, axis=1) * np.linalg.norm(cpu, axis=1))
    rel = np.abs(gpu - cpu).max() / np.abs(cpu).max()
    print(f"cuda ({results['cuda'][2]}): {results['cuda'][1]:.2f} s; cpu ({results['cpu'][2]}): "
          f"{results['cpu'][1]:.2f} s for {len(cpu)} utterances")
    print(f"largest difference / largest value {rel:.2e}; cosine per utterance min {cos.min():.5f}, "
          f"mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
