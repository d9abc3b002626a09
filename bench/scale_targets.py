"""The scale benchmark's targets, checked against its results (see ``scale_report``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import benchlib

QUIET_TITLE = "## Scale targets on a quiet machine (issue 19)"


def epoch_seconds(step: dict[str, Any] | None) -> tuple[float, float, float] | None:
    """``(training pass, with the dev scoring, rows/s of the training pass)``, mean over epochs."""
    if not step or "history" not in step or step.get("returncode"):
        return None
    hist = [h for h in step["history"] if "train_seconds" in h]
    if not hist:
        return None
    train = sum(h["train_seconds"] for h in hist) / len(hist)
    whole = sum(h["seconds"] for h in hist) / len(hist)
    rows = sum(h["rows_seen"] for h in hist) / len(hist)
    return train, whole, rows / train


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def state(step: dict[str, Any]) -> str:
    return f"others used {100 * step['others_cpu']:.0f}% of the CPU, load {step['load_before'].split('/')[0]}"


def epoch_text(step: dict[str, Any], e: tuple[float, float, float], per_epoch: bool = False) -> str:
    """Seconds per epoch, with the training pass and its rows/s (and each epoch's seconds)."""
    seconds = ", ".join(f"{h['seconds']:.1f}" for h in step["history"] if "seconds" in h)
    each = f"epochs {seconds} s; "
    return (f"{e[1]:.1f} s per epoch ({each if per_epoch else ''}{e[0]:.1f} s training, {e[2]:,.0f} rows/s; "
            "the rest scores the dev split)")


def conditions(step: dict[str, Any]) -> str:
    """How the features were held (the command's notes) and the machine's state."""
    return f"{'; '.join(step['output'].get('notes') or ['in memory'])}; {state(step)}"


def targets(data: dict[int, dict[str, Any]]) -> list[str]:
    out = ["Targets (2 cores):", ""]
    for n, limit, rss in ((1_000_000, 20.0, None), (10_000_000, 180.0, 4096.0)):
        step = data.get(n, {}).get("train_mlp")
        e = epoch_seconds(step)
        if e is None:
            out.append(f"- mlp on {n:,} x 384: not measured.")
            continue
        ok = e[1] <= limit and (rss is None or step["peak_rss_mb"] <= rss)
        mem = f", peak RSS {step['peak_rss_mb']:,.0f} MB (target <= {rss:,.0f})" if rss else ""
        out.append(f"- mlp on {n:,} x 384, <= {limit:.0f} s per epoch{' and <= 4 GB' if rss else ''}: "
                   f"{verdict(ok)}: {epoch_text(step, e)}{mem}; {conditions(step)}.")
    for n in sorted(data):
        mem, stream = data[n].get("train_mlp_memory"), data[n].get("train_mlp_stream")
        a, b = epoch_seconds(mem), epoch_seconds(stream)
        if a and b:
            out.append(f"- Out of core >= half the in-memory rows/s ({n:,} rows, mlp, 2 epochs): "
                       f"{verdict(b[2] >= 0.5 * a[2])}: {b[2]:,.0f} rows/s streamed (--memory-budget 256M, peak "
                       f"{stream['peak_rss_mb']:,.0f} MB) against {a[2]:,.0f} in memory (peak "
                       f"{mem['peak_rss_mb']:,.0f} MB), {b[2] / a[2]:.2f}x; {state(stream)} / {state(mem)}.")
    info = data.get(10_000_000, {}).get("info")
    if info:
        out.append(f"- `info` on 10M rows <= 2 s: {verdict(info['wall_s'] <= 2.0)}: {info['wall_s']:.2f} s "
                   f"({state(info)}).")
    return out


def quiet_report(work: Path, sizes: list[int], write: bool = False) -> str:
    """The targets measured again with nothing else running (``scale.py quiet``)."""
    lines = [f"Machine: {benchlib.machine()}, no GPU; each command in its own process with no other work running "
             "(the CPU share other processes used is given with each figure). `python bench/scale.py quiet "
             "--sizes 10000000`, then `quiet-report --write`. Same store as the curve above (rebuilt: "
             "`scale.py build`).", ""]
    for n in sizes:
        path = work / str(n) / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        infos = [res[k] for k in sorted(res) if k.startswith("quiet_info_")]
        for step in (res[k] for k in sorted(res) if k.startswith("quiet_train_mlp")):
            if not (e := epoch_seconds(step)):
                continue
            ok = e[1] <= 180 and step["peak_rss_mb"] <= 4096
            lines.append(f"- mlp on {n:,} x 384, <= 180 s per epoch and <= 4 GB: {verdict(ok)}: "
                         f"{epoch_text(step, e, per_epoch=True)}, peak RSS {step['peak_rss_mb']:,.0f} MB; "
                         f"{conditions(step)}; date {step.get('date', '?')}.")
        if infos:
            walls = [r["wall_s"] for r in infos]
            lines.append(f"- `info` on {n:,} rows <= 2 s: {verdict(max(walls) <= 2.0)}: "
                         f"{', '.join(f'{w:.2f}' for w in walls)} s in {len(walls)} runs ({state(infos[-1])}).")
        if before := [res[k]["wall_s"] for k in sorted(res) if k.startswith("before_info_")]:
            lines.append(f"  Before the flags were read by zarrs (zarr's own codec pipeline), the same day: "
                         f"{', '.join(f'{w:.2f}' for w in before)} s.")
    text = "\n".join(lines)
    print(text)
    if write:
        benchlib.write_section(QUIET_TITLE, text)
    return text
