"""Serving a distilled MiniLM student against its all-mpnet-base-v2 teacher: `emostore serve` on
loopback with an ``mlp`` head on each fine-tuned feature set of MELD, text requests from 1 and 4
clients, one server at a time. The two feature sets come from `bench/finetune_text.py` (runs
``meld-mpnet-nc-s0`` and ``meld-student-nc-s0``); the test weighted F1 of each head is measured
on MELD's test split.

    python bench/student_latency.py [--requests 200] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import date
from pathlib import Path

import benchlib
from servelib import Server, closed_loop, uptime

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "bench" / "out" / "meld"
OUT = ROOT / "bench" / "out" / "student_latency.json"
SECTION = "## Serving the distilled student against its teacher (issue 16)"
MODELS = {"teacher: all-mpnet-base-v2 fine-tuned (110M)": "text/meld-mpnet-nc-s0",
          "student: MiniLM-L6 distilled from it (22M)": "text/meld-student-nc-s0"}


def measure(requests: int) -> dict:
    from emostore.heads.evaluate import evaluate
    from emostore.heads.run import train

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, features in MODELS.items():
            _, ckpt = train(STORE, [features], "mlp", Path(tmp) / features.replace("/", "-"), progress=False)
            f1 = evaluate(ckpt, STORE, split="test").metrics["weighted_f1"]
            row = {"features": features, "test_weighted_f1": round(float(f1), 4), "load_before": uptime()}
            with Server(ckpt) as server:
                for clients in (1, 4):
                    r = closed_loop(server.url, clients, ["text"], None, requests=requests)
                    if r["errors"]:
                        raise SystemExit(f"{label}: {r['errors'][:3]}")
                    k = r["kinds"]["text"]
                    row[f"{clients}_clients"] = {"p50": k["p50"], "p95": k["p95"], "per_s": k["rps"]}
                row["rss_mb"] = round(server.rss_mb())
            row["load_after"] = uptime()
            results[label] = row
            print(label, json.dumps(row), flush=True)
    return {"date": date.today().isoformat(), "machine": benchlib.machine(), "requests": requests,
            "models": results}


def report(r: dict) -> str:
    lines = [f"Date {r['date']}; {r['machine']}, no GPU; `emostore serve` on 127.0.0.1 (CPU, precision auto: "
             f"bfloat16 here), an `mlp` head on the fine-tuned MELD vectors; {r['requests']} text requests per "
             "row, each client one keep-alive connection sending one request after another. The fine-tuning "
             "benchmark's jobs ran beside it (load averages below). `python bench/student_latency.py --write`.", "",
             "| model | test weighted F1 (mlp) | p50 / p95, 1 client | p50 / p95, 4 clients | requests/s, 4 clients "
             "| server RSS | load average before |",
             "|---|---|---|---|---|---|---|"]
    for label, m in r["models"].items():
        one, four = m["1_clients"], m["4_clients"]
        lines.append(f"| {label} | {m['test_weighted_f1']:.4f} | {one['p50']:.0f} / {one['p95']:.0f} ms | "
                     f"{four['p50']:.0f} / {four['p95']:.0f} ms | {four['per_s']:.1f} | {m['rss_mb']:,} MB | "
                     f"{m['load_before'].split('average')[-1].strip(' :')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="write the section from the last results")
    args = ap.parse_args()
    if args.report_only:
        r = json.loads(OUT.read_text())
    else:
        r = measure(args.requests)
        OUT.write_text(json.dumps(r, indent=2) + "\n")
    text = report(r)
    print(text)
    if args.write:
        benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
