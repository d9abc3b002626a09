"""The scale benchmark's targets, checked against its results (see ``scale_report``)."""

from __future__ import annotations

from typing import Any


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
                   f"{verdict(ok)}: {e[1]:.1f} s per epoch ({e[0]:.1f} s training, {e[2]:,.0f} rows/s; the rest "
                   f"scores the dev split){mem}; {'; '.join(step['output'].get('notes') or ['in memory'])}; "
                   f"{state(step)}.")
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
