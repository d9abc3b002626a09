"""N text queries against a store's index in one process (the scale benchmark's "search, 100
queries"): the store and its index opened once (and checked fresh), then MELD test utterances,
each encoded, searched and explained as `emostore search` does. Prints JSON: the time to open,
the queries' median latency and their total.

    python bench/scale_search.py STORE INDEX N
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from emostore.search.settings import quiet_openmp

quiet_openmp()  # as `emostore search` does, before torch loads: waiting threads sleep, not spin

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from emostore.search.query import neighbours  # noqa: E402
from emostore.search.run import open_index  # noqa: E402
from emostore.store import Store  # noqa: E402

MELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "meld" / "test_sent_emo.csv"


def main() -> None:
    store, index, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    texts = pd.read_csv(MELD)["Utterance"].drop_duplicates().sample(n, random_state=0).tolist()
    t = time.perf_counter()
    st = Store.open(store, mode="r")
    idx = open_index(st, index)
    assert not idx.stale_reasons(st)
    opened = time.perf_counter() - t
    times = []
    for text in texts:
        t = time.perf_counter()
        neighbours(st, idx, text, k=10)
        times.append(time.perf_counter() - t)
    print(json.dumps({"queries": n, "open_s": round(opened, 3), "median_ms": round(1000 * float(np.median(times)), 2),
                      "queries_s": round(sum(times), 2)}))


if __name__ == "__main__":
    main()
