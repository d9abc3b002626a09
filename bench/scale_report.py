"""The scale benchmark's report: growth exponents, the tables, the log-log plot and the targets.

The exponent of a measure is the slope of log(measure) against log(rows), fitted by least squares
over the sizes where it was measured (1: linear; 0: flat).
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import benchlib
import numpy as np

SECTION = "## Cost as the work grows: 10k to 10M rows (issue 19)"
PLOT = benchlib.ROOT / "docs" / "scale_curve.png"
#: (label, results key): the commands of the curve, in order.
STEPS = [("ingest", "ingest"), ("extract, per 100k rows", "extract"), ("info", "info"),
         ("train mlp (2 epochs)", "train_mlp"), ("train context (1 epoch)", "train_context"),
         ("train logreg", "train_logreg"), ("evaluate (mlp, test split)", "evaluate"),
         ("index build flat", "index_flat"), ("index build IVF-PQ", "index_ivf"), ("index build HNSW", "index_hnsw"),
         ("search, 1 query", "search_1"), ("search, 100 queries", "search_100"), ("predict with evidence", "predict")]


def load(work: Path, sizes: list[int]) -> dict[int, dict[str, Any]]:
    out = {}
    for n in sizes:
        path = work / str(n) / "results.json"
        if path.exists():
            out[n] = json.loads(path.read_text())
    return out


def measure(res: dict[str, Any], key: str, what: str) -> float | None:
    """``wall_s``, ``cpu_s`` or ``peak_rss_mb`` of a step (extraction: per 100k rows); None when
    the step did not run to the end."""
    r = res.get(key)
    if not r or r.get("skipped") or r.get("stopped") or r.get("returncode"):
        return None
    if key == "extract" and what != "peak_rss_mb":
        return r.get(f"per_100k_{what}")
    return r.get(what)


def exponent(sizes: list[int], values: list[float | None]) -> float | None:
    pts = [(n, v) for n, v in zip(sizes, values) if v]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def cell(res: dict[str, Any], key: str, what: str) -> str:
    r = res.get(key)
    if r is None:
        return "-"
    if r.get("skipped"):
        return "not run"
    if r.get("stopped"):
        return f"stopped at {r['wall_s']:.0f} s, {r['peak_rss_mb'] / 1024:.1f} GB"
    v = measure(res, key, what)
    if v is None:
        return "failed"
    if what == "peak_rss_mb":
        return f"{v:,.0f}"
    cpu = measure(res, key, "cpu_s")
    return f"{v:,.1f} ({cpu:,.1f})" if cpu is not None else f"{v:,.1f}"


def tables(data: dict[int, dict[str, Any]]) -> list[str]:
    sizes = sorted(data)
    head = "| command | " + " | ".join(f"{n:,} rows" for n in sizes) + " | exponent |"
    rule = "|---|" + "---|" * (len(sizes) + 1)
    lines = ["Wall time in seconds (CPU time, user + system, in brackets):", "", head, rule]
    for label, key in STEPS:
        e = exponent(sizes, [measure(data[n], key, "wall_s") for n in sizes])
        lines.append(f"| {label} | " + " | ".join(cell(data[n], key, "wall_s") for n in sizes)
                     + f" | {'-' if e is None else f'{e:.2f}'} |")
    lines += ["", "Peak resident memory in MB (the command's processes):", "", head, rule]
    for label, key in STEPS:
        e = exponent(sizes, [measure(data[n], key, "peak_rss_mb") for n in sizes])
        lines.append(f"| {label} | " + " | ".join(cell(data[n], key, "peak_rss_mb") for n in sizes)
                     + f" | {'-' if e is None else f'{e:.2f}'} |")
    lines += ["", "Machine state during each figure: CPU time other processes used, as a share of both cores "
              "(0% = quiet, 100% = both cores busy with other work), and the load average before:", "", head[:-12]
              + "|", rule[:-4]]
    for label, key in STEPS:
        lines.append(f"| {label} | " + " | ".join(state(data[n].get(key)) for n in sizes) + " |")
    return lines


def not_run(data: dict[int, dict[str, Any]]) -> list[str]:
    """Why each figure marked "not run" was not run (the memory it would take, at the time)."""
    lines = []
    for n in sorted(data):
        for label, key in STEPS:
            if (r := data[n].get(key)) and r.get("skipped"):
                lines.append(f"- {label} at {n:,} rows: {r['skipped'].removeprefix('not run: ')}.")
    return ["Not run:", "", *lines, ""] if lines else []


def state(r: dict[str, Any] | None) -> str:
    if not r or "others_cpu" not in r:
        return "-"
    return f"{100 * r['others_cpu']:.0f}%, {r['load_before'].split('/')[0]}"


def plot(data: dict[int, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(data)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for (label, key), style in zip(STEPS, [*"ov^<>sdph*xD+"]):
        for ax, what in zip(axes, ("wall_s", "peak_rss_mb")):
            pts = [(n, measure(data[n], key, what)) for n in sizes]
            pts = [(n, v) for n, v in pts if v]
            if pts:
                ax.plot(*zip(*pts), marker=style, label=label)
    for ax, title in zip(axes, ("wall time (s)", "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("rows in the store")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="upper left")
    fig.suptitle("emostore commands against store size (2 cores, shared machine; see BENCHMARKS.md)")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def report(work: Path, sizes: list[int], write: bool = False) -> str:
    from scale_targets import targets

    data = load(work, sizes)
    vectors = ", ".join(f"{n:,}: {'derived' if 'derive' in data[n] else 'real'}" for n in sorted(data))
    text = "\n".join([
        SECTION, "",
        f"Date {date.today().isoformat()}; machine: {benchlib.machine()}, 24 GiB, no GPU; every command beside "
        "other work (niced fine-tuning runs and tests; the 10M store's first figures niced themselves, `nice -n 5`, "
        "the later ones not): see the machine state of each figure below. "
        "`nice -n 5 python bench/scale.py build|measure`, then "
        "`python bench/scale.py report --write`.", "",
        "Stores: MELD dialogues recombined under new ids (each a real dialogue of its split, turns in order), "
        f"text/minilm vectors from the real all-MiniLM-L6-v2 or derived from real vectors ({vectors}; derived as "
        "`bench/search_speed.py` does, around each row's own utterance vector). Each command runs in its own "
        "process, defaults unless said (memory budget: half of the memory available when it starts).", "",
        *tables(data), "", *not_run(data), f"![time and memory against rows](docs/{PLOT.name})", "",
        *targets(data), ""])
    print(text)
    if write:
        plot(data)
        benchlib.write_section(SECTION, text)
    return text
