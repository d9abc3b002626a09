"""``emostore finetune text``: check everything, fine-tune (and the cross-fitting fold models),
write the model folder and ``finetune.json``, optionally extract into the store.

Layout of ``--out``::

    MODEL_DIR/                 Hugging Face folder of the model trained on the whole train split
      finetune.json            written last: how it was trained, its metrics, the input format
      training/                while training: run.json (what is being trained), state, best weights
      folds/<k>/               with --folds K: the model that did not see fold k (same layout)
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emostore import __version__
from emostore.core.clock import now
from emostore.core.runtime import cpu_threads, resolve_device, resolve_precision
from emostore.core.targets import Target
from emostore.errors import UserError
from emostore.extract.dialogue_input import POOLING, DialogueFormat, TurnTokenizer
from emostore.extract.finetuned import META, content_hash, load_transformer, model_max_length, read_meta
from emostore.finetune.data import READ_COLUMNS, FinetuneData, build_data, describe_rows, fold_of_rows, target_of
from emostore.finetune.model import TextClassifier, export
from emostore.finetune.options import FinetuneOptions
from emostore.finetune.state import RUN, cleanup, read_json, write_json
from emostore.finetune.teacher import OUTPUTS, Teacher, check_format, load_teacher, teacher_outputs
from emostore.finetune.train import Distillation, FinetuneConfig, Log, TrainResult, metrics_of, predict, train_model
from emostore.store import Store

FORMAT = "emostore-finetuned-text"
TRAINING, FOLDS, DONE = "training", "folds", "done.json"


def is_empty(out: Path) -> bool:
    """No folder, an empty one, or one a run was killed in before it wrote anything."""
    if not out.is_dir():
        return True
    contents = list(out.iterdir())
    return not contents or (contents == [out / TRAINING] and not any((out / TRAINING).iterdir()))


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that holds anything but a fine-tuning run (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not is_empty(out) and not ((out / META).is_file() or (out / TRAINING / RUN).is_file()):
        raise UserError(f"--out {out} exists and holds something other than a fine-tuned model; "
                        "choose an empty or new folder")


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k} {y!r} there, {x!r} now")
    return out


def claim_out(out: Path, spec: dict[str, Any], overwrite: bool) -> str:
    """``new``, ``resume``, ``finished`` or ``extend`` (the same model without ``--folds``) for ``out``
    and this run; refuse another run's folder (``overwrite``: delete the run it holds, start over)."""
    if is_empty(out):
        return "new"
    if overwrite:
        shutil.rmtree(out)
        return "new"
    finished = (out / META).is_file()
    recorded = read_meta(out).get("spec") if finished else read_json(out / TRAINING / RUN)
    if recorded == spec:
        return "finished" if finished else "resume"
    same_model = bool(recorded) and {**recorded, "folds": spec["folds"]} == spec
    if finished and same_model and not recorded.get("folds") and spec["folds"]:
        return "extend"  # the same model, now with cross-fitting models
    diff = "; ".join(_differences(spec, recorded or {})[:4])
    raise UserError(f"--out {out} holds another run ({diff}); choose another --out, or pass --overwrite "
                    "to replace it")


def _evaluation(data: FinetuneData, outputs: np.ndarray, rows: np.ndarray, *, out: Path, store: Store,
                target: str) -> dict[str, Any]:
    m = metrics_of(data, rows, outputs)
    m.update({"split": "test", "checkpoint": str(out), "store": str(store.path), "head": "finetuned-classifier",
              "feature_sets": [], "target": target})
    return m


def train_one(out: Path, *, backbone_loader: Any, data: FinetuneData, tokenizer: TurnTokenizer, hf_tokenizer: Any,
              train_rows: np.ndarray, config: FinetuneConfig, device: str, options: FinetuneOptions, store: Store,
              progress: bool, log: Log, label: str = "", distill: Distillation | None = None) -> dict[str, Any]:
    """Train (or resume, or reuse) one model into ``out``; returns its summary (``done.json``)."""
    done = out / TRAINING / DONE
    if done.is_file():
        log(f"{label}{out} is already trained; going on")
        return read_json(done)
    torch.manual_seed(config.seed)  # the classifier's initial weights, then dropout
    backbone = backbone_loader()
    model = TextClassifier(backbone, data.target.n_out, config.dropout)
    result: TrainResult = train_model(model, data, tokenizer, train_rows, config, state_dir=out / TRAINING,
                                      device=device, save_every=options.save_every, progress=progress, log=log,
                                      label=label, distill=distill, max_batch_tokens=options.max_batch_tokens)
    export(model, hf_tokenizer, out, max_length=tokenizer.max_length)
    test_rows = data.rows("test")
    test = None
    if len(test_rows):
        outputs = predict(model, data, tokenizer, test_rows, device=device, precision=config.precision)
        test = _evaluation(data, outputs, test_rows, out=out, store=store, target=options.target)
    seconds = [h["train_seconds"] for h in result.history]
    summary = {"history": result.history, "best_epoch": result.best_epoch, "dev": result.dev,
               "test_metrics": test, "train_rows": len(train_rows), "seconds": round(result.seconds, 1),
               "minutes_per_epoch": round(float(np.mean(seconds)) / 60, 2) if seconds else None,
               "resumed": result.resumed, "notes": result.notes, "model_hash": content_hash(out)}
    write_json(done, summary)
    cleanup_weights(out / TRAINING)
    return summary


def distillation(teacher: Teacher, options: FinetuneOptions, store: Store, data: FinetuneData,
                 train_rows: np.ndarray, *, device: str, cache: Path, log: Log) -> Distillation:
    """The teacher's outputs on the train rows (computed once, kept in ``cache`` while training)."""
    outputs = teacher_outputs(teacher, store, data.target, train_rows, device=device, cache=cache / OUTPUTS,
                              log=log)
    return Distillation(options.temperature, options.distill_weight, outputs)


def cleanup_weights(directory: Path) -> None:
    for p in directory.glob("*.safetensors"):
        p.unlink(missing_ok=True)


def finetune(store_path: Path, out: Path, options: FinetuneOptions, *, overwrite: bool = False,
             progress: bool = False, log: Log = print) -> dict[str, Any]:
    """Fine-tune ``options.model`` on ``store_path`` into ``out``; returns ``finetune.json``'s content."""
    with cpu_threads(options.threads):
        return _finetune(store_path, out, options, overwrite=overwrite, progress=progress, log=log)


@dataclass
class Plan:
    """Everything a run needs, checked before any training: the store and target, the input
    format, the model and its tokenizer, the tokenized rows, the training configuration and the
    run's ``spec`` (what ``--out`` must hold to be resumed)."""

    store: Store
    target: Target
    fmt: DialogueFormat
    teacher: Teacher | None
    device: str
    precision: str
    hf_tokenizer: Any
    backbone: Any
    base: str
    tokenizer: TurnTokenizer
    data: FinetuneData
    config: FinetuneConfig
    spec: dict[str, Any]


def input_format(options: FinetuneOptions, teacher: Teacher | None) -> DialogueFormat:
    if teacher is None:
        return DialogueFormat(options.past or 0, options.future or 0, True if options.speaker is None else
                              options.speaker)
    if not 0.0 <= options.distill_weight <= 1.0 or options.temperature <= 0:
        raise UserError(f"--distill-weight must be in [0, 1] and --temperature above 0, got "
                        f"{options.distill_weight} and {options.temperature}")
    return check_format(teacher, options.past, options.future, options.speaker)


def plan_run(store_path: Path, out: Path, options: FinetuneOptions) -> Plan:
    """Check the options, the store and ``out``; load the model; tokenize every row."""
    store = Store.open(store_path, mode="r")
    target = target_of(store, options.target)
    check_out(out)
    device = resolve_device(options.device)
    precision = resolve_precision(options.precision, device, training=True)
    teacher = load_teacher(options.teacher, target) if options.teacher else None
    fmt = input_format(options, teacher)
    if options.folds and options.folds < 2:
        raise UserError(f"--folds must be 2 or more (or 0 for none), got {options.folds}")
    hf_tokenizer, backbone, base = load_transformer(options.model, device="cpu")
    limit = model_max_length(backbone, hf_tokenizer)
    max_length = options.max_length or min(limit, 512)
    if max_length > limit:
        raise UserError(f"--max-length {max_length} is more than {base} takes ({limit} tokens)")
    tokenizer = TurnTokenizer(hf_tokenizer, max_length)
    data = build_data(store, target, fmt, tokenizer)
    config = FinetuneConfig(epochs=options.epochs, lr=options.lr, batch_size=options.batch_size,
                            grad_accum=options.grad_accum, class_weights=options.class_weights,
                            label_smoothing=options.label_smoothing, weight_decay=options.weight_decay,
                            warmup=options.warmup, seed=options.seed, precision=precision)
    spec = {"base_model": base, "store_table": data.table_hash, "target": target.to_dict(),
            "input": {**fmt.to_dict(), "max_length": max_length, "pooling": POOLING},
            "training": config.to_dict(), "folds": options.folds}
    if teacher is not None:
        spec["teacher"] = teacher.to_dict(options.temperature, options.distill_weight)
    return Plan(store, target, fmt, teacher, device, precision, hf_tokenizer, backbone, base, tokenizer, data,
                config, spec)


def open_out(out: Path, plan: Plan, folds: int, overwrite: bool, log: Log) -> str:
    """Claim ``out`` for this run (:func:`claim_out`) and lay out its training folder."""
    state = claim_out(out, plan.spec, overwrite)
    if state == "finished":
        return state
    (out / TRAINING).mkdir(parents=True, exist_ok=True)
    if state in ("new", "extend"):
        write_json(out / TRAINING / RUN, plan.spec)
    if state == "extend":
        log(f"{out} holds this model without cross-fitting models: adding {folds} (the model is kept)")
        old = read_meta(out)
        write_json(out / TRAINING / DONE, {"history": old["history"], "best_epoch": old["best_epoch"],
                                           "dev": old["dev_metrics"], "test_metrics": old["test_metrics"],
                                           "minutes_per_epoch": old["minutes_per_epoch"], "notes": old["notes"],
                                           "model_hash": old["model_hash"]})
    return state


def train_folds(out: Path, plan: Plan, train_rows: np.ndarray, options: FinetuneOptions,
                common: dict[str, Any]) -> dict[str, Any]:
    """The cross-fitting models: one per fold of whole train dialogues, each without its fold."""
    table = plan.store.table
    assignment = fold_of_rows(table, train_rows, options.folds, options.seed)
    ids = table["id"].to_numpy()
    folds = []
    for k in range(options.folds):
        keep = np.array([r for r in train_rows if assignment[int(r)] != k])
        fold_dir = out / FOLDS / str(k)
        fold_dir.mkdir(parents=True, exist_ok=True)
        summary = train_one(fold_dir, train_rows=keep, label=f"fold {k + 1}/{options.folds}: ", **common)
        folds.append({"path": f"{FOLDS}/{k}", "held_out_rows": int(len(train_rows) - len(keep)),
                      **{key: summary[key] for key in ("best_epoch", "dev", "test_metrics", "history",
                                                       "minutes_per_epoch", "model_hash")}})
    return {"folds": options.folds, "by": "dialogue",
            "fold_of": {str(ids[r]): int(f) for r, f in sorted(assignment.items())}, "models": folds}


def describe(plan: Plan, full: dict[str, Any], cross_fit: dict[str, Any] | None, seconds: float) -> dict[str, Any]:
    """``finetune.json``: how the model was trained, its input format, metrics and folds."""
    store, data, target = plan.store, plan.data, plan.target
    return {
        "format": FORMAT, "format_version": 1, "emostore_version": __version__, "created": now(),
        "spec": plan.spec, "base_model": plan.base,
        "store": {"path": str(Path(store.path).resolve()), "dataset": store.dataset, "table_hash": data.table_hash,
                  "columns": [*READ_COLUMNS, target.column], **describe_rows(data)},
        "input": plan.spec["input"], "target": target.to_dict(), "labels": target.labels,
        "training": {**plan.config.to_dict(), "device": plan.device, "optimizer": "AdamW, linear warm-up and decay",
                     "selection": "dev MAE" if target.regression else "dev weighted F1"},
        "history": full["history"], "best_epoch": full["best_epoch"], "dev_metrics": full["dev"],
        "test_metrics": full["test_metrics"], "minutes_per_epoch": full["minutes_per_epoch"],
        "model_hash": full["model_hash"], "cross_fit": cross_fit, "notes": full["notes"],
        "teacher": plan.spec.get("teacher"), "seconds": round(seconds, 1),
    }


def _finetune(store_path: Path, out: Path, options: FinetuneOptions, *, overwrite: bool, progress: bool,
              log: Log) -> dict[str, Any]:
    out = Path(out)
    plan = plan_run(store_path, out, options)
    if open_out(out, plan, options.folds, overwrite, log) == "finished":
        log(f"{out} already holds this fine-tuned model (finished); nothing to train")
        return read_meta(out)
    started = time.perf_counter()
    source = plan.backbone

    def fresh_backbone() -> Any:
        """The base weights for each model trained (the first one reuses the loaded copy)."""
        nonlocal source
        if source is not None:
            b, source = source, None
            return b
        return load_transformer(options.model, device="cpu")[1]

    common: dict[str, Any] = {"backbone_loader": fresh_backbone, "data": plan.data, "tokenizer": plan.tokenizer,
                              "hf_tokenizer": plan.hf_tokenizer, "config": plan.config, "device": plan.device,
                              "options": options, "store": plan.store, "progress": progress, "log": log}
    train_rows = plan.data.rows("train")
    if plan.teacher is not None:
        common["distill"] = distillation(plan.teacher, options, plan.store, plan.data, train_rows,
                                         device=plan.device, cache=out / TRAINING, log=log)
    fmt, teacher = plan.fmt, plan.teacher
    rows = ", ".join(f"{split} {n}" for split, n in plan.data.counts().items())
    log(f"fine-tuning {plan.base} on {plan.store.path} ({plan.target.name}; labelled rows: {rows}; past "
        f"{fmt.past}, future {fmt.future}, speakers {'on' if fmt.speaker else 'off'}; max length "
        f"{plan.spec['input']['max_length']}) on {plan.device}, {plan.precision}"
        + (f"; distilling {teacher.folder} (temperature {options.temperature:g}, weight {options.distill_weight:g})"
           if teacher is not None else ""))
    full = train_one(out, train_rows=train_rows, **common)
    cross_fit = train_folds(out, plan, train_rows, options, common) if options.folds else None
    meta = describe(plan, full, cross_fit, time.perf_counter() - started)
    write_json(out / META, meta)
    cleanup(out / TRAINING)
    shutil.rmtree(out / TRAINING, ignore_errors=True)
    for k in range(options.folds):
        shutil.rmtree(out / FOLDS / str(k) / TRAINING, ignore_errors=True)
    return meta


def extract(store_path: Path, out: Path, *, name: str | None = None, device: str = "auto",
            batch_size: int | None = None, precision: str | None = None,
            progress: bool = False) -> list[dict[str, Any]]:
    """Write the fine-tuned model's vectors into the store: ``text/<name>`` from the model, and
    with cross-fitting models also ``text/<name>-xfit<K>``. Resumable like any extraction."""
    from emostore.extract.base import build_encoder
    from emostore.extract.runner import run_extraction

    store = Store.open(store_path)
    meta = read_meta(out)
    folds = (meta.get("cross_fit") or {}).get("folds", 0)
    reports = []
    for cross_fit in ([False, True] if folds else [False]):
        feature_name = None if name is None else name + (f"-xfit{folds}" if cross_fit else "")
        with build_encoder("text", "finetuned", {"model": str(out), "cross_fit": cross_fit, "precision": precision},
                           {"device": device, "batch_size": batch_size, "store": str(store_path)},
                           name=feature_name) as enc:
            report = run_extraction(store, enc, progress=progress)
        reports.append({"feature_set": report.feature_set, "config_hash": report.config_hash,
                        "rows_run": report.rows_run, "rows_failed": report.rows_failed, "complete": report.complete})
    return reports


