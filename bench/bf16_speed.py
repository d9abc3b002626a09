"""bfloat16 against float32 on this CPU, as whole commands: ``emostore extract text`` on MELD
(MiniLM and all-mpnet-base-v2) and one epoch of ``emostore finetune text`` (MPNet, and MiniLM),
each run as its own process, one after another. Also the agreement of the bf16 vectors with
the float32 ones (cosine per row).

    python bench/bf16_speed.py run [--threads 2] [--only extract|finetune]   # bench/out/bf16/*.json
    python bench/bf16_speed.py report [--write]                              # BENCHMARKS.md section

Run it on a quiet machine (the report records the load average before and after each command).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import benchlib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = OUT / "bf16"
SHARED = ROOT.parent / "shared"
MPNET = OUT / "models" / "all-mpnet-base-v2"
SECTION = "## bfloat16 on this CPU: whole commands (issue 16)"
PRECISIONS = ("float32", "bfloat16")


def load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds_of_children() -> float:
    r = os.times()
    return r.children_user + r.children_system


def command(args: list[str], threads: int) -> dict:
    """Run ``emostore ARGS`` in a fresh process; wall and CPU seconds, load before and after."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT)}
    before, cpu0, t0 = load(), cpu_seconds_of_children(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emostore.cli", *args], env=env, capture_output=True, text=True,
                          check=False)
    wall, cpu = time.perf_counter() - t0, cpu_seconds_of_children() - cpu0
    if proc.returncode:
        raise SystemExit(f"emostore {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return {"args": args, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": before,
            "load_after": load(), "stderr_tail": proc.stderr[-400:]}


def meld_store() -> Path:
    from emostore.ingest.run import ingest

    path = OUT / "meld"
    if not (path / "zarr.json").exists():
        ingest("meld", SHARED / "data" / "meld", path)
    return path


def fetch_mpnet() -> None:
    if not (MPNET / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_mpnet.py"), str(MPNET.parent)], check=True)


def save(name: str, result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({**result, "date": date.today().isoformat(),
                                                      "machine": benchlib.machine()}, indent=2) + "\n")


def extraction(threads: int) -> None:
    from emostore.store import Store

    store = meld_store()
    for label, model in (("minilm", "minilm"), ("mpnet", str(MPNET))):
        names = {}
        for precision in PRECISIONS:
            name = f"bf16-{label}-{precision}"
            names[precision] = name
            r = command(["extract", "text", str(store), "--model", model, "--precision", precision, "--name", name,
                         "--device", "cpu", "--overwrite", "--quiet"], threads)
            save(f"extract-{label}-{precision}", {**r, "model": label, "precision": precision, "threads": threads,
                                                  "rows": len(Store.open(store, mode="r"))})
            print(f"extract {label} {precision}: {r['wall_s']} s wall, {r['cpu_s']} s CPU", flush=True)
        st = Store.open(store, mode="r")
        _, a, _ = st.feature_set(f"text/{names['float32']}").read()
        _, b, _ = st.feature_set(f"text/{names['bfloat16']}").read()
        ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
        cos = (a[ok] * b[ok]).sum(1) / np.linalg.norm(a[ok], axis=1) / np.linalg.norm(b[ok], axis=1)
        save(f"agreement-{label}", {"model": label, "rows": int(ok.sum()), "cosine_min": float(cos.min()),
                                    "cosine_mean": float(cos.mean())})


def finetuning(threads: int) -> None:
    store = meld_store()
    for label, model, lr in (("mpnet", str(MPNET), "2e-5"), ("minilm", "minilm", "1e-4")):
        for precision in PRECISIONS:
            out = OUT / "bf16" / f"ft-{label}-{precision}"
            shutil.rmtree(out, ignore_errors=True)
            r = command(["finetune", "text", str(store), "--out", str(out), "--model", model, "--epochs", "1",
                         "--lr", lr, "--precision", precision, "--device", "cpu", "--threads", str(threads),
                         "--save-every", "0", "--json"], threads)
            meta = json.loads((out / "finetune.json").read_text())
            h = meta["history"][0]
            save(f"finetune-{label}-{precision}", {**r, "model": label, "precision": precision, "threads": threads,
                                                   "epoch_wall_s": h["train_seconds"],
                                                   "epoch_cpu_s": h["train_cpu_seconds"], "dev": h.get("dev")})
            print(f"finetune {label} {precision}: epoch {h['train_seconds'] / 60:.1f} min", flush=True)
            shutil.rmtree(out, ignore_errors=True)


def row(kind: str, label: str, a: dict, b: dict) -> str:
    """One table row: float32 (a) against bfloat16 (b)."""
    if kind == "extract":
        fa, fb = (a["wall_s"], a["cpu_s"]), (b["wall_s"], b["cpu_s"])
        text, unit = f"`extract text` ({a['rows']:,} MELD utterances)", "s"
    else:
        fa = (a["epoch_wall_s"] / 60, a["epoch_cpu_s"] / 60)
        fb = (b["epoch_wall_s"] / 60, b["epoch_cpu_s"] / 60)
        text, unit = "`finetune text`, one epoch (9,989 MELD train utterances, no context, batch 32)", "min"
    return (f"| {text} | {label} | {fa[0]:.2f} / {fa[1]:.2f} {unit} | {fb[0]:.2f} / {fb[1]:.2f} {unit} | "
            f"{fa[0] / fb[0]:.2f}× |")


def report() -> str:
    rs = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    if not rs:
        return "No results yet: `python bench/bf16_speed.py run`."
    any_r = next(iter(rs.values()))
    loads = [v for r in rs.values() for v in (r.get("load_before"), r.get("load_after")) if v is not None]
    lines = [f"Date {any_r['date']}; {any_r['machine']}, no GPU; torch 2.13.0+cpu; "
             f"{any_r.get('threads', 2)} threads; each command a fresh process, one at a time; load average "
             f"{min(loads):.2f}–{max(loads):.2f} at the commands' starts and ends (the other jobs paused: a quiet "
             "machine). `python bench/bf16_speed.py run`, then `report --write`.", "",
             "| command | model | float32 wall / CPU | bfloat16 wall / CPU | speed-up (wall) |",
             "|---|---|---|---|---|"]
    for kind in ("extract", "finetune"):
        for label in ("minilm", "mpnet"):
            a, b = rs.get(f"{kind}-{label}-float32"), rs.get(f"{kind}-{label}-bfloat16")
            if a and b:
                lines.append(row(kind, label, a, b))
    agree = [rs[k] for k in rs if k.startswith("agreement-")]
    if agree:
        lines += ["", "Agreement of the bfloat16 vectors with the float32 ones, per utterance: " + "; ".join(
            f"{r['model']} cosine min {r['cosine_min']:.4f}, mean {r['cosine_mean']:.5f} ({r['rows']:,} rows)"
            for r in agree) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--only", choices=("extract", "finetune"), default=None)
    w = sub.add_parser("report")
    w.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "run":
        fetch_mpnet()
        if args.only in (None, "extract"):
            extraction(args.threads)
        if args.only in (None, "finetune"):
            finetuning(args.threads)
    else:
        text = report()
        print(text)
        if args.write:
            benchlib.write_section(SECTION, f"{SECTION}\n\n{text}")


if __name__ == "__main__":
    main()
