"""Rich renderings of what the commands report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # only for the annotation: importing the adapters (h5py, ...) slows every command
    from emostore.ingest.base import IngestResult

console = Console()
#: Warnings and errors: on stderr, so that stdout holds only what a command reports.
errors = Console(stderr=True)


def next_steps(info: dict[str, Any]) -> str:
    """What can be extracted from a store: text when it has text, audio/visual when it has media."""
    steps = []
    if info["with_text"]:
        steps.append("`emostore extract text STORE`")
    if info["with_media"]:
        steps += ["`emostore extract audio STORE`", "`emostore extract visual STORE`"]
    if not steps:
        return ("its utterances have neither text nor media, so there is nothing to extract; "
                "it holds labels only")
    return "run " + " or ".join(steps)


def dims_text(dim: int, seq_dim: int | None) -> str:
    """``384-d``, or for a feature set that keeps frames ``50-d, frames 25-d`` (its vector pools the frames)."""
    return f"{dim}-d" + (f", frames {seq_dim}-d" if seq_dim else "")


def show_info(info: dict[str, Any]) -> None:
    console.print(f"[bold]{info['path']}[/bold]  dataset [cyan]{info['dataset']}[/cyan]  "
                  f"{info['utterances']} utterances, {info['dialogues']} dialogues, {info['speakers']} speakers, "
                  f"{info['with_text']} with text, {info['with_media']} with media")
    splits = list(info["splits"])
    t = Table(title="utterances per split and emotion")
    t.add_column("emotion")
    for s in splits:
        t.add_column(s, justify="right")
    t.add_column("all", justify="right")
    for label, n in info["labels"].items():
        t.add_row(label, *[str(info["labels_by_split"].get(s, {}).get(label, 0)) for s in splits], str(n))
    t.add_row("[bold]all[/bold]", *[str(info["splits"][s]) for s in splits], str(info["utterances"]))
    console.print(t)
    if info["problems"] or info["repairs"]:
        console.print(f"ingest: {info['problems']} recorded problems, {info['repairs']} repaired cells")
    if not info["features"]:
        console.print(f"no feature sets yet: {next_steps(info)}")
        return
    show_feature_sets(info["features"])


def show_feature_sets(features: dict[str, dict[str, Any]]) -> None:
    """``info``'s feature sets: a table, the frames they keep, their first failed rows."""
    f = Table(title="feature sets")
    for col in ("name", "dim", "done", "failed", "config", "model"):
        f.add_column(col, overflow="fold")
    for name, s in features.items():
        done = f"{s['rows_done']}/{s['rows']}" + ("" if s["complete"] else " [yellow](incomplete)[/yellow]")
        if s.get("chunks_missing"):
            done += f" [red](damaged: {len(s['chunks_missing'])} chunks; run emostore verify --repair)[/red]"
        model = str(s["config"].get("model", s["encoder"])).split("/")[-1]
        f.add_row(name, str(s["dim"]), done, str(s["rows_failed"]), s["config_hash"], model)
    console.print(f)
    for name, s in features.items():
        if s.get("seq_dim"):
            console.print(f"  {name}: {s['dim']}-d vectors; each utterance's {s['seq_dim']}-d frames are kept too",
                          highlight=False)
    for name, s in features.items():
        for e in s["errors"][:5]:
            console.print(f"  [red]{name}[/red] {e['id']}: {e['reason']}")
        if s["rows_failed"] > 5:
            console.print(f"  ... {s['rows_failed'] - 5} more failed rows in {name}")


def counts_text(counts: dict[Any, int]) -> str:
    """``train 268, dev 51, test 66`` (rows without a value counted as ``no split``)."""
    return ", ".join(f"{'no split' if k is None or k != k else k} {v}" for k, v in counts.items())


def show_ingest(result: IngestResult, path: str, limit: int = 10) -> None:
    """The summary on stdout; warnings and errors about rows and files on stderr."""
    t = result.table
    splits = t["split"].value_counts(dropna=False).to_dict()
    emotions = t["emotion"].nunique()
    labels = f"{emotions} emotions" if emotions else "no emotion labels"
    console.print("[green]ingested[/green] " + escape(f"{len(t)} utterances from {result.dataset} into {path} "
                                                      f"({counts_text(splits)}); {labels}"),
                  highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(escape(f"  note: {note}"), highlight=False, soft_wrap=True)
    issues = [p for p in result.problems if p.level != "repair"]
    repairs = [p for p in result.problems if p.level == "repair"]
    if repairs:
        console.print(escape(f"  repaired {len(repairs)} cells (e.g. {repairs[0]})"), highlight=False, soft_wrap=True)
    for p in issues[:limit]:
        colour = "red" if p.level == "error" else "yellow"
        errors.print(f"  [{colour}]{p.level}[/{colour}] {escape(str(p))}", highlight=False, soft_wrap=True)
    if len(issues) > limit:
        errors.print(f"  ... {len(issues) - limit} more problems (all recorded in the store; see `emostore info`)",
                     highlight=False, soft_wrap=True)


def show_neighbours(result: dict[str, Any]) -> None:
    u = result.get("query_utterance")
    if u is not None:  # the utterance's own words, speaker and label, beside its id
        who = f" ({u['speaker']})" if u.get("speaker") else ""
        said = repr(u["text"][:60]) if u.get("text") else "(no text)"
        label = f" [{u['label']}]" if u.get("label") else ""
        title = f"{result['k']} nearest to utterance {u['id']}{who}{label}: {said}"
    else:
        title = f"{result['k']} nearest to {result['query_kind']}: {result['query'][:60]!r}"
    t = Table(title=escape(title))
    for col in ("#", "sim", "id", "speaker", "label", "text"):
        t.add_column(col, overflow="fold")
    for i, h in enumerate(result["neighbours"], 1):
        t.add_row(str(i), f"{h['similarity']:.3f}", str(h["id"]), str(h["speaker"] or ""), str(h["label"] or ""),
                  (h["text"] or "")[:80])
    console.print(t)
    if result["labels"]:
        shares = ", ".join(f"{lab} {v['share']:.0%} ({v['count']})" for lab, v in result["labels"].items())
        console.print(f"nearest emotion: [bold]{result['nearest_emotion']}[/bold]  ({shares})")


def show_prediction(result: dict[str, Any]) -> None:
    present = [n for n, m in result["modalities"].items() if m["present"]]
    missing = {n: m.get("reason", "") for n, m in result["modalities"].items() if not m["present"]}
    if "score" in result:
        console.print(f"{result['target']} score: [bold]{result['score']:+.3f}[/bold]")
    else:
        console.print(f"{result['target']}: [bold]{result['label']}[/bold]")
        t = Table(show_header=False, box=None)
        for label, p in result["probabilities"].items():
            t.add_row(label, f"{p:.3f}", "█" * round(p * 30))
        console.print(t)
    console.print(f"from {', '.join(present)} with the {result['head']} head"
                  + "".join(f"; {n} masked ({why})" for n, why in missing.items()))
    for name, why in result.get("unused_inputs", {}).items():  # given, but this checkpoint cannot use it
        errors.print(escape(f"warning: --{name} {why}"), style="yellow", highlight=False, soft_wrap=True)
    for e in result.get("evidence", []):
        console.print(escape(f"  similar: {e['similarity']:.3f} ({e['label']}) {e['id']}: {e['text']}"))


def show_verify(report: Any, *, repair: bool) -> None:
    """What ``emostore verify`` found (and repaired): one line per damaged thing."""
    checked = report.checked
    what = [f"{len(checked.get('table', []))} table columns" if "table" in checked else "",
            f"{len(checked.get('feature sets', []))} feature sets", f"{len(checked.get('indexes', []))} indexes"
            if "indexes" in checked else ""]
    console.print(f"checked {report.store}: " + ", ".join(w for w in what if w), highlight=False, soft_wrap=True)
    for d in report.damage:
        console.print(escape(f"  damaged: {d.line()}"), highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(escape(f"  note: {note}"), highlight=False, soft_wrap=True)
    left = [d for d in report.damage if not d.repaired]
    if not report.damage:
        console.print("no damage found", highlight=False, soft_wrap=True)
    elif not left:
        console.print("repaired: run the same `emostore extract` commands again to recompute what was marked "
                      "pending (and `emostore index build` for removed indexes)", highlight=False, soft_wrap=True)
    elif any(not d.repairable for d in left):
        console.print("the utterance table is damaged and cannot be recomputed: ingest the corpus again "
                      "(`emostore ingest ... --overwrite`), then extract", highlight=False, soft_wrap=True)
    elif not repair:
        console.print(f"{len(left)} damaged: `emostore verify {report.store} --repair` marks them pending for the "
                      "next extract", highlight=False, soft_wrap=True)


def show_extraction(out: dict[str, Any]) -> None:
    """What ``extract`` did: one line, the first failures, damaged chunks recomputed."""
    state = "complete" if out["complete"] else "incomplete (other shards or a rerun will finish it)"
    print(f"{out['feature_set']} ({out['encoder']}, config {out['config_hash']}, "
          f"{dims_text(out['dim'], out.get('seq_dim'))}) on {out['device']}: "
          f"{out['rows_run']} rows in {out['chunks_run']} chunks, {out['rows_failed']} failed; {state}")
    if out["chunks_damaged"]:
        print(f"  {out['chunks_damaged']} finished chunks were damaged (missing files or failed checksums) and were "
              "computed again", file=sys.stderr)
    for f in out["failures"][:10]:
        print(f"  {f['id']}: {f['reason']}", file=sys.stderr)
    if len(out["failures"]) > 10:
        print(f"  ... {len(out['failures']) - 10} more (see `emostore info`)", file=sys.stderr)


def show_index(summary: dict[str, Any]) -> None:
    print(f"indexed {summary['n_vectors']} utterances ({summary['dim']}-d {', '.join(summary['features'])}, "
          f"{summary['kind']}) in {summary['build_seconds']:.2f} s -> {summary['index']}")
    for note in summary.get("notes", []):
        print(f"  note: {note}", file=sys.stderr)


def show_trained(summary: dict[str, Any]) -> None:
    """A head trained by epochs: its best epoch; one fitted in one go (knn, svm, logreg): what it settled on."""
    score = "n/a (no dev split)" if summary["dev_score"] is None else f"{summary['dev_score']:.4f}"
    how = (f"fitted with {summary['fitted_with']}" if summary.get("fitted_with") else
           f"at epoch {summary['best_epoch']} of {summary['epochs_run']}")
    verb = "fitted" if summary.get("fitted_with") else "trained"
    print(f"{summary['head']} {verb} on {summary['device']} in {summary['seconds']:.1f}s: {summary['metric']} "
          f"{score} {how}; checkpoint {summary['checkpoint']}")
    for note in summary["notes"]:
        print(f"  note: {note}")


def show_finetuned(meta: dict[str, Any], out: Any) -> None:
    """A fine-tuned model: its best epoch and test score, and the feature sets ``--extract`` wrote."""
    t = meta.get("test_metrics") or {}
    score = (f"test MAE {t['mae']:.4f}, corr {t['corr']:.4f}" if t.get("task") == "regression" else
             f"test weighted F1 {t['weighted_f1']:.4f}, accuracy {t['accuracy']:.4f}" if t else "no test rows")
    print(f"{out}: best epoch {meta['best_epoch']} of {len(meta['history'])}; {score}")
    for r in meta.get("extracted", []):
        print(f"  {r['feature_set']} (config {r['config_hash']}): {r['rows_run']} rows, {r['rows_failed']} failed, "
              f"{'complete' if r['complete'] else 'incomplete'}")


def option_value(value: Any) -> str:
    """A default as it is typed after ``-p KEY=``: ``true``/``false``, ``none``, lists comma-separated."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(option_value, value))
    return str(value)


def show_registry(data: dict[str, Any]) -> None:
    """``emostore list``: the heads and encoders, with their options and defaults."""
    for h in data.get("heads", []):
        print(f"head {h['name']}: {h['summary']}")
        print("    -p " + " ".join(f"{k}={option_value(v)}" for k, v in h["params"].items()))
    for e in data.get("encoders", []):
        if "unavailable" in e:
            print(f"encoder module {e['module']}: not available ({e['unavailable']})")
            continue
        print(f"encoder {e['modality']} --encoder {e['kind']}: {e['summary']}")
        print("    -p " + " ".join(f"{k}={option_value(v)}" for k, v in e["options"].items())
              + (f"; runtime: {', '.join(e['runtime'])}" if e["runtime"] else ""))


#: Columns of the sweep table that are not metrics.
SWEEP_COLUMNS = ("head", "features", "setting", "seeds", "seconds")


def show_sweep(result: dict[str, Any]) -> None:
    """The sweep's summary (mean ±std over seeds per configuration); it fits 80 columns by wrapping
    cells between words (one feature set per line, a std under its mean), never by cutting them."""
    summary = result["summary"]
    keys = [k for k in (summary[0] if summary else {}) if k not in SWEEP_COLUMNS]
    t = Table(title=f"{len(result['runs'])} runs scored on the {result['split']} split in {result['seconds']:.0f}s "
                    "(mean ±std over seeds)", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
              collapse_padding=True)
    settings = [[f"{k}={v}" for k, v in row["setting"].items()] or ["-"] for row in summary]
    widest = {"head": [row["head"] for row in summary], "features": [f for row in summary for f in row["features"]],
              "setting": [s for setting in settings for s in setting], "seconds": ["seconds"],
              **{k: ["±0.0000"] for k in keys}}
    for col in ("head", "features", "setting", "seeds", *keys, "seconds"):
        numeric = col in (*keys, "seeds", "seconds")
        t.add_column(col.replace("_f1", " F1").replace("_", " "), justify="right" if numeric else "left",
                     overflow="fold", min_width=max(map(len, widest.get(col, [""])), default=0),
                     no_wrap=col in ("head", "features", "seeds", "seconds"))
    for row, setting in zip(summary, settings):
        t.add_row(row["head"], "\n".join(row["features"]), "\n".join(setting), str(row["seeds"]),
                  *[f"{row[k]['mean']:.4f} ±{row[k]['std']:.4f}" for k in keys], f"{row['seconds']['mean']:.1f}")
    console.print(t)
    for f in result["failures"]:
        errors.print(f"failed: {f['head']} {','.join(f['features'])} seed {f['seed']}: {f['error']}",
                     markup=False, highlight=False, style="red", soft_wrap=True)
