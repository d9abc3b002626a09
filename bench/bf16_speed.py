"""bfloat16 against float32 on this CPU, as whole commands: ``emostore extract text`` on MELD
(MiniLM and all-mpnet-base-v2) and one epoch of ``emostore finetune text`` (MPNet, and MiniLM),
each run as its own process, one after another. Also the agreement of the bf16 vectors with
the float32 ones (cosine per row).

    python bench/bf16_speed.py run [--threads 2] [--shared] [--only extract|finetune|agreement]
    python bench/bf16_speed.py report [--write]          # bench/out/bf16/*.json -> BENCHMARKS.md section

Run it on a quiet machine, or say ``--shared`` when other jobs run beside it (the report says
which, with the load average before and after each command).
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


def set_name(label: str, precision: str) -> str:
    """The feature set a model's vectors in one precision are extracted to."""
    return f"bf16-{label}-{precision}"


def extraction(threads: int, shared: bool) -> None:
    from emostore.store import Store

    store = meld_store()
    for label, model in (("minilm", "minilm"), ("mpnet", str(MPNET))):
        for precision in PRECISIONS:
            r = command(["extract", "text", str(store), "--model", model, "--precision", precision, "--name",
                         set_name(label, precision), "--device", "cpu", "--overwrite", "--quiet"], threads)
            save(f"extract-{label}-{precision}", {**r, "model": label, "precision": precision, "threads": threads,
                                                  "shared": shared, "rows": len(Store.open(store, mode="r"))})
            print(f"extract {label} {precision}: {r['wall_s']} s wall, {r['cpu_s']} s CPU", flush=True)
        agreement(store, label)


def agreement(store: Path, label: str) -> None:
    """Per-utterance cosine of the bfloat16 vectors to the float32 ones, and the utterance that differs most."""
    from emostore.store import Store

    st = Store.open(store, mode="r")
    ids, a, _ = st.feature_set(f"text/{set_name(label, 'float32')}").read()
    _, b, _ = st.feature_set(f"text/{set_name(label, 'bfloat16')}").read()
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1)
    cos = (a[ok] * b[ok]).sum(1) / np.linalg.norm(a[ok], axis=1) / np.linalg.norm(b[ok], axis=1)
    worst = int(np.argmin(cos))
    text = st.table.set_index("id").loc[str(ids[ok][worst]), "text"]
    save(f"agreement-{label}", {"model": label, "rows": int(ok.sum()), "cosine_min": float(cos.min()),
                                "cosine_mean": float(cos.mean()), "cosine_p01": float(np.percentile(cos, 0.1)),
                                "below_099": int((cos < 0.99).sum()), "worst_text": str(text)})


def finetuning(threads: int, shared: bool) -> None:
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
                                                   "shared": shared, "epoch_wall_s": h["train_seconds"],
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
            f"{fa[0] / fb[0]:.2f}× / {fa[1] / fb[1]:.2f}× |")


def conditions(rs: list[dict]) -> str:
    """Threads, load average and whether other jobs ran beside a group of commands."""
    loads = [v for r in rs for v in (r.get("load_before"), r.get("load_after")) if v is not None]
    threads = sorted({r.get("threads", 2) for r in rs})
    quiet = not any(r.get("shared") for r in rs)
    return (f"{'/'.join(map(str, threads))} thread(s); load average {min(loads):.2f}–{max(loads):.2f} at the "
            "commands' starts and ends " + ("(the other jobs paused: a quiet machine)." if quiet else
                                            "(other jobs ran beside them, at times a test suite: a shared "
                                            "machine, where wall time is inflated; CPU time is the steadier "
                                            "number)."))


def report() -> str:
    rs = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    if not rs:
        return "No results yet: `python bench/bf16_speed.py run`."
    any_r = next(iter(rs.values()))
    lines = [f"Date {any_r['date']}; {any_r['machine']}, no GPU; torch 2.13.0+cpu; each command a fresh process, "
             "one at a time. `python bench/bf16_speed.py run`, then `report --write`.", ""]
    for kind in ("extract", "finetune"):
        kind_rs = [r for k, r in rs.items() if k.startswith(f"{kind}-")]
        if kind_rs:
            lines.append(f"- `{kind}`: " + conditions(kind_rs))
    lines += ["", "| command | model | float32 wall / CPU | bfloat16 wall / CPU | speed-up (wall / CPU) |",
              "|---|---|---|---|---|"]
    for kind in ("extract", "finetune"):
        for label in ("minilm", "mpnet"):
            a, b = rs.get(f"{kind}-{label}-float32"), rs.get(f"{kind}-{label}-bfloat16")
            if a and b:
                lines.append(row(kind, label, a, b))
    agree = [rs[k] for k in rs if k.startswith("agreement-")]
    if agree:
        lines += ["", "Agreement of the bfloat16 vectors with the float32 ones, per utterance: " + "; ".join(
            f"{r['model']} cosine mean {r['cosine_mean']:.5f}, 0.1th percentile {r['cosine_p01']:.4f}, min "
            f"{r['cosine_min']:.4f} ({r['below_099']} of {r['rows']:,} rows below 0.99; the lowest: "
            f"{r['worst_text']!r})" for r in agree) + "."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--shared", action="store_true", help="other jobs run beside it (the report says so)")
    r.add_argument("--only", choices=("extract", "finetune", "agreement"), default=None)
    w = sub.add_parser("report")
    w.add_argument("--write", action="store_true")
    args = ap.parse_args()
    if args.cmd == "run":
        fetch_mpnet()
        if args.only in (None, "extract"):
            extraction(args.threads, args.shared)
        if args.only == "agreement":  # from the stored feature sets, without extracting again
            for label in ("minilm", "mpnet"):
                agreement(meld_store(), label)
        if args.only in (None, "finetune"):
            finetuning(args.threads, args.shared)
    else:
        text = report()
        print(text)
        if args.write:
            benchlib.write_section(SECTION, text)


if __name__ == "__main__":
    main()
