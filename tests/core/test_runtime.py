"""``--precision auto`` on machines with and without bfloat16 hardware (the CPU flags simulated),
and what a stored precision becomes when a feature set's encoder is rebuilt."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SAMPLE
from typer.testing import CliRunner

from emostore.cli import app
from emostore.core import runtime
from emostore.errors import UserError
from emostore.extract.encoders.text import SentenceTransformerEncoder, TextConfig
from emostore.ingest.run import ingest
from emostore.store import Store

AMX = frozenset({"fpu", "avx512f", "amx_tile", "amx_bf16", "amx_int8"})
AVX512_BF16 = frozenset({"fpu", "avx512f", "avx512_bf16"})
PLAIN = frozenset({"fpu", "avx2", "avx512f"})


def flags(monkeypatch, value: frozenset[str]) -> None:
    monkeypatch.setattr(runtime, "cpu_flags", lambda: value)


@pytest.mark.parametrize(("cpu", "inference", "training"), [
    (AMX, "bfloat16", "bfloat16"), (AVX512_BF16, "bfloat16", "bfloat16"), (PLAIN, "float32", "float32"),
    (frozenset(), "float32", "float32")])
def test_auto_follows_the_cpu_flags(monkeypatch, cpu, inference, training):
    flags(monkeypatch, cpu)
    assert runtime.resolve_precision("auto", "cpu") == inference
    assert runtime.resolve_precision("auto", "cpu", training=True) == training
    assert runtime.resolve_precision("auto", "mps") == "float32"


def test_explicit_precisions_and_refusals(monkeypatch):
    flags(monkeypatch, PLAIN)
    assert runtime.resolve_precision("bfloat16", "cpu") == "bfloat16"  # slow without the hardware, still exact
    assert runtime.resolve_precision("float16", "cpu") == "float16"    # inference casts; allowed
    with pytest.raises(UserError, match="float16 needs a CUDA device for training"):
        runtime.resolve_precision("float16", "cpu", training=True)
    with pytest.raises(UserError, match="--precision must be auto"):
        runtime.resolve_precision("half", "cpu")


def test_the_real_flags_are_read_from_proc_cpuinfo():
    runtime.cpu_flags.cache_clear()
    found = runtime.cpu_flags()
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    assert ("avx512_bf16" in found) == (" avx512_bf16" in text)
    assert runtime.cpu_has_fast_bf16() == any(f in found for f in runtime.BF16_FLAGS)


def test_a_stored_precision_is_kept_when_rebuilt_on_a_cpu(monkeypatch):
    """A bfloat16 feature set is rebuilt in bfloat16 on any CPU (live rows equal stored rows);
    float16 (made on a GPU) becomes float32 on a CPU."""
    flags(monkeypatch, PLAIN)
    assert runtime.stored_precision("bfloat16", "cpu") == "bfloat16"
    assert runtime.stored_precision("float16", "cpu") == "float32"
    assert runtime.stored_precision("float16", "cuda") == "float16"
    enc = SentenceTransformerEncoder.from_config(TextConfig(precision="bfloat16").to_dict(), device="cpu")
    assert enc.config.precision == "bfloat16" and enc.precision == "bfloat16"


@pytest.fixture()
def store(tmp_path) -> Store:
    st, _ = ingest("csv", [SAMPLE], tmp_path / "store", dataset="sample")
    return st


def test_extract_auto_records_the_resolved_precision_and_refuses_mixing(monkeypatch, store):
    """auto on a bf16 CPU makes a bfloat16 feature set; the same command on a CPU without bf16
    resolves to float32 and is refused (a feature set never mixes precisions), with a hint."""
    runner = CliRunner()
    base = ["extract", "text", str(store.path), "--device", "cpu", "--quiet"]
    flags(monkeypatch, AMX)
    r = runner.invoke(app, [*base, "--name", "auto-amx"])
    assert r.exit_code == 0, r.output
    flags(monkeypatch, PLAIN)
    r = runner.invoke(app, [*base, "--name", "auto-plain"])
    assert r.exit_code == 0, r.output
    st = Store.open(store.path, mode="r")
    amx, plain = st.feature_set("text/auto-amx"), st.feature_set("text/auto-plain")
    assert amx.config["precision"] == "bfloat16" and plain.config["precision"] == "float32"
    assert amx.config_hash != plain.config_hash
    r = runner.invoke(app, [*base, "--name", "auto-amx"])  # float32 asked into a bfloat16 set
    assert r.exit_code == 1
    line = r.stderr.strip()
    assert "\n" not in line and "precision 'bfloat16' stored, 'float32' asked" in line, line
    assert "--precision bfloat16 resumes it" in line
    r = runner.invoke(app, [*base, "--name", "auto-amx", "--precision", "bfloat16"])
    assert r.exit_code == 0, r.output
