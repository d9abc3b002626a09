"""Audio extraction on real files: Emo-DB wavs, the audio tracks of real videos, and broken media."""

from __future__ import annotations

import json
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import optional, shared_data

opensmile = optional("opensmile", "audio")
av = optional("av", "audio")
sf = optional("soundfile", "audio")

from emostore.extract.audio_io import MediaError, load_audio  # noqa: E402
from emostore.extract.encoders.opensmile import OpenSmileEncoder  # noqa: E402
from emostore.extract.runner import run_extraction  # noqa: E402
from emostore.ingest.base import finalize  # noqa: E402
from emostore.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def emodb() -> list[Path]:
    return sorted(shared_data("emodb", "wav").glob("*.wav"))


@pytest.fixture(scope="module")
def videos() -> Path:
    return shared_data("face_media")


def make_store(path: Path, rows: list[dict]) -> Store:
    df = pd.DataFrame([{"id": f"u{i}", "dialogue": "d", "turn": i, **r} for i, r in enumerate(rows)])
    return Store.create(path, finalize(df, "t", [], "t"), dataset="t")


def smile(feature_set: str, level: str = "Functionals") -> opensmile.Smile:
    """openSMILE on its own, resampling to the encoder's 16 kHz itself."""
    return opensmile.Smile(getattr(opensmile.FeatureSet, feature_set), getattr(opensmile.FeatureLevel, level),
                           sampling_rate=16000, resample=True)


def encode(path: Path, x: np.ndarray, rate: int, codec: str = "aac") -> None:
    """Encode mono float audio with one of FFmpeg's encoders (timestamps from sample 0)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if codec == "aac":
            frame = av.AudioFrame.from_ndarray(x[None, :].astype(np.float32), format="fltp", layout="mono")
        else:  # 16-bit PCM, packed
            pcm = np.round(x * 32768).clip(-32768, 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, 0, Fraction(1, rate)
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def lag(a: np.ndarray, b: np.ndarray) -> int:
    """Offset of ``a`` against ``b`` (0 when aligned), from the cross-correlation peak."""
    return int(np.argmax(np.correlate(a, b, "full")) - (len(b) - 1))


# ----- reading -----------------------------------------------------------------------------------
def test_formats_segments_and_video_tracks(tmp_path, emodb, videos):
    wav = emodb[0]
    native, rate = sf.read(wav, dtype="float32")
    assert rate == 22050
    assert load_audio(wav, 16000).shape == (32000,)  # 2.0 s resampled to 16 kHz
    np.testing.assert_array_equal(load_audio(wav, rate, 0.5, 1.25), native[11025:27562])
    # a WAV streamed to a pipe has placeholder sizes in its header: not truncated
    data = bytearray(wav.read_bytes())
    assert data[36:40] == b"data"
    data[4:8], data[40:44] = (0x7FFFF024).to_bytes(4, "little"), (0x7FFFF000).to_bytes(4, "little")
    (tmp_path / "streamed.wav").write_bytes(data)
    np.testing.assert_array_equal(load_audio(tmp_path / "streamed.wav", rate), native)
    sf.write(tmp_path / "a.flac", native, rate)
    sf.write(tmp_path / "a.ogg", native, rate, format="OGG", subtype="VORBIS")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac", rate), native, atol=1 / 32768)
    ogg = load_audio(tmp_path / "a.ogg", rate)
    assert len(ogg) == len(native) and np.corrcoef(ogg, native)[0, 1] > 0.99

    # a video's audio track: mp3 inside mp4, and the same stream remuxed into a bare .mp3 file
    clip = load_audio(videos / "single_face.mp4", 16000)
    assert abs(len(clip) / 16000 - 2.419) < 0.01 and np.abs(clip).max() > 0.005
    with av.open(str(videos / "single_face.mp4")) as src, av.open(str(tmp_path / "a.mp3"), "w") as dst:
        out = dst.add_stream_from_template(src.streams.audio[0])
        for packet in src.demux(src.streams.audio[0]):
            if packet.dts is not None:
                packet.stream = out
                dst.mux(packet)
    mp3 = load_audio(tmp_path / "a.mp3", 16000)
    assert abs(len(mp3) - len(clip)) < 0.02 * 16000 and np.abs(mp3).max() > 0.005
    assert len(load_audio(videos / "WolfgangLanger_Pexels.mp4", 16000, 10.0, 12.5)) == 40000  # aac track

    # a segment deep inside a longer AAC file (read by seeking) lines up with the source samples
    # 16-bit PCM in a Matroska file goes through FFmpeg and comes back sample for sample
    encode(tmp_path / "pcm.mkv", native, rate, codec="pcm_s16le")
    np.testing.assert_array_equal(load_audio(tmp_path / "pcm.mkv", rate), native)

    long = np.concatenate([sf.read(f, dtype="float32")[0] for f in emodb[:5]])
    encode(tmp_path / "long.m4a", long, rate)
    seg = load_audio(tmp_path / "long.m4a", rate, 6.0, 8.0)
    ref = long[6 * rate:8 * rate]
    assert len(seg) == len(ref) and lag(seg, ref) == 0 and np.corrcoef(seg, ref)[0, 1] > 0.99


def test_segment_errors(emodb, videos):
    with pytest.raises(MediaError, match="zero-length segment"):
        load_audio(emodb[0], 16000, 1.0, 1.0)
    with pytest.raises(MediaError, match=r"segment out of range: .*\[2\.500, 3\.000\] s, but the media lasts 2\.000 s"):
        load_audio(emodb[0], 16000, 2.5, 3.0)
    with pytest.raises(MediaError, match="segment out of range"):
        load_audio(videos / "single_face.mp4", 16000, 1.0, 9.0)
    assert len(load_audio(emodb[0], 16000, 1.5, 2.05)) == 8000  # rounding past the end is trimmed


# ----- extraction --------------------------------------------------------------------------------
def test_broken_media_recorded_per_utterance(tmp_path, emodb, videos):
    good, other = emodb[0], emodb[1]
    data = good.read_bytes()
    (tmp_path / "truncated.wav").write_bytes(data[:len(data) // 3])
    mp4 = (videos / "WolfgangLanger_Pexels.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(mp4[:len(mp4) // 5])
    (tmp_path / "noise.wav").write_bytes(np.random.default_rng(0).integers(1, 255, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "notes.ogg").write_text("these are not sounds\n")
    # a well-formed WAV whose codec (format tag 0x5A5A) no decoder knows: real samples, relabelled
    pcm = data[44:]
    fmt = struct.pack("<HHIIHH", 0x5A5A, 1, 22050, 44100, 2, 16)
    (tmp_path / "codec.wav").write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(pcm)) + b"WAVE"
                                         + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                                         + b"data" + struct.pack("<I", len(pcm)) + pcm)
    rows = [
        {"media": str(good)},                                                       # 0 ok
        {"media": str(tmp_path / "truncated.wav")},                                 # 1
        {"media": str(tmp_path / "truncated.mp4")},                                 # 2
        {"media": str(tmp_path / "noise.wav")},                                     # 3
        {"media": str(tmp_path / "missing.wav")},                                   # 4
        {"media": str(other), "start": 1.0, "end": 1.0},                            # 5 zero-length
        {"media": str(other), "start": 2.5, "end": 4.0},                            # 6 out of range
        {"media": str(tmp_path / "notes.ogg")},                                     # 7
        {"media": str(videos / "woman2.mp4")},                                      # 8 no audio track
        {"media": str(videos / "test.mp4")},                                        # 9 no audio track
        {"media": str(videos / "justin.jpg")},                                      # 10 image
        {"media": str(videos / "single_face.mp4")},                                 # 11 ok: mp3 track
        {"media": str(videos / "WolfgangLanger_Pexels.mp4"), "start": 2.0, "end": 4.0},  # 12 ok: aac track
        {"media": str(videos / "woman2.mp4"), "audio": str(other), "audio_start": 0.5, "audio_end": 1.5},  # 13 ok
        {"media": str(other), "start": 0.25, "end": 1.75},                          # 14 ok
        {"text": "no media at all"},                                                # 15
        {"media": str(tmp_path / "codec.wav")},                                     # 16
    ]
    store = make_store(tmp_path / "s", rows)
    report = run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), chunk_rows=4, progress=False)
    assert report.complete and report.rows_run == 17

    fs = store.feature_set("audio/egemaps")
    _, X, mask = fs.read()
    assert X.shape == (17, 88)
    assert np.flatnonzero(mask).tolist() == [0, 11, 12, 13, 14]
    assert np.isfinite(X[mask]).all() and np.isnan(X[~mask]).all()
    errors = {e["id"]: e["reason"] for e in store.info()["features"]["audio/egemaps"]["errors"]}
    expected = {
        1: ("truncated file", "truncated.wav"), 2: ("truncated file", "truncated.mp4"),
        3: ("unsupported format", "noise.wav"), 4: ("missing file", "missing.wav"),
        5: ("zero-length segment", other.name), 6: ("segment out of range", other.name),
        7: ("unsupported format", "notes.ogg"), 8: ("no audio", "woman2.mp4 has no audio track"),
        9: ("no audio", "test.mp4 has no audio track"), 10: ("no audio", "justin.jpg is an image"),
        15: ("no audio", "no media file"), 16: ("unsupported codec", "codec.wav"),
    }
    assert set(errors) == {f"u{i}" for i in expected}
    for i, (what, where) in expected.items():
        assert errors[f"u{i}"].startswith(what) and where in errors[f"u{i}"], errors[f"u{i}"]

    # a stored row equals openSMILE run on the file directly
    ref = smile("eGeMAPSv02").process_file(str(good)).to_numpy(np.float32)[0]
    np.testing.assert_allclose(X[0], ref, rtol=1e-5, atol=1e-6)
    ref = smile("eGeMAPSv02").process_file(str(other), start=pd.Timedelta(seconds=0.25),
                                           end=pd.Timedelta(seconds=1.75)).to_numpy(np.float32)[0]
    np.testing.assert_allclose(X[14], ref, rtol=1e-4, atol=1e-5)
    ref = smile("eGeMAPSv02").process_file(str(other), start=pd.Timedelta(seconds=0.5),
                                           end=pd.Timedelta(seconds=1.5)).to_numpy(np.float32)[0]
    np.testing.assert_allclose(X[13], ref, rtol=1e-4, atol=1e-5)  # the audio column wins over media

    rerun = run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps"), progress=False)
    assert rerun.chunks_run == 0 and rerun.complete  # resumable: nothing left to do


def test_lld_frames_and_compare(tmp_path, emodb):
    files = emodb[:3]
    rows = [{"media": str(f)} for f in files] + [{"media": str(files[0]), "start": 0.5, "end": 1.0}]
    store = make_store(tmp_path / "s", rows)
    enc = OpenSmileEncoder.create(feature_set="egemaps-lld")
    assert (enc.dim, enc.seq_dim) == (50, 25)
    run_extraction(store, enc, progress=False)
    fs = store.feature_set("audio/egemaps-lld")
    _, X, mask = fs.read()
    assert mask.all() and X.shape == (4, 50)
    for row, f in enumerate(files):
        direct = smile("eGeMAPSv02", "LowLevelDescriptors").process_file(str(f))
        steps = np.diff(direct.index.get_level_values("start").total_seconds())
        np.testing.assert_allclose(steps, 0.01)  # one frame every 10 ms
        frames = fs.read_sequence(row)
        assert frames.shape == direct.shape == (196, 25)  # 2.0 s of audio
        np.testing.assert_allclose(frames, direct.to_numpy(np.float32), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(X[row], np.concatenate([frames.mean(0), frames.std(0)]), rtol=1e-5, atol=1e-6)
    assert abs(len(fs.read_sequence(3)) - 46) <= 1  # 0.5 s

    compare = OpenSmileEncoder.create(feature_set="compare")
    assert compare.dim == 6373 and compare.seq_dim is None
    run_extraction(store, compare, progress=False)
    _, X, mask = store.read("audio/compare")
    assert X.shape == (4, 6373) and mask.all()
    ref = smile("ComParE_2016").process_file(str(files[1])).to_numpy(np.float32)[0]
    np.testing.assert_allclose(X[1], ref, rtol=1e-4, atol=1e-4)


def test_workers_give_the_same_store(tmp_path, emodb):
    rows = [{"media": str(f)} for f in emodb[:10]] + [{"media": str(tmp_path / "gone.wav")}]
    stores = [make_store(tmp_path / f"w{w}", rows) for w in (1, 2)]
    for store, workers in zip(stores, (1, 2), strict=True):
        report = run_extraction(store, OpenSmileEncoder.create(feature_set="egemaps-lld"), chunk_rows=4,
                                workers=workers, progress=False)
        assert report.complete and report.rows_failed == 1
    a, b = (s.feature_set("audio/egemaps-lld") for s in stores)
    for x, y in zip(a.read(), b.read(), strict=True):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.read_sequences(), b.read_sequences(), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.errors() == b.errors() and "missing file" in a.errors()[0][2]


def test_config_records_what_changes_values():
    a = OpenSmileEncoder.create(feature_set="egemaps")
    b = OpenSmileEncoder.create(feature_set="egemaps", sample_rate=22050)
    assert a.stored_config["sample_rate"] == 16000 and a.stored_config["opensmile"] == opensmile.__version__
    assert a.stored_config != b.stored_config
    assert a.stored_config != OpenSmileEncoder.create(feature_set="egemaps-lld").stored_config
    assert a.rebuild().stored_config == a.stored_config  # workers rebuild the same encoder


def test_cli(tmp_path, emodb):
    from typer.testing import CliRunner

    from emostore.cli import app

    make_store(tmp_path / "s", [{"media": str(f)} for f in emodb[:2]] + [{"media": str(tmp_path / "x.flac")}])
    r = CliRunner().invoke(app, ["extract", "audio", str(tmp_path / "s"), "--feature-set", "egemaps", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["feature_set"] == "audio/egemaps" and out["dim"] == 88 and out["rows_run"] == 3
    assert out["rows_failed"] == 1 and out["failures"][0]["reason"].startswith("missing file")
    r = CliRunner().invoke(app, ["extract", "audio", str(tmp_path / "s"), "--feature-set", "nope"])
    assert r.exit_code == 1 and "unknown audio feature set 'nope'; choose from egemaps, compare" in r.output
    assert "Traceback" not in r.output


def test_stream_audio_gives_the_whole_file_in_blocks(tmp_path):
    """Blocks of a FLAC (libsndfile) and of an AAC track (FFmpeg), resampled as they come, join up to what
    ``load_audio`` reads at once (the AAC blocks keep the encoder's padding at the end: under 0.1 s)."""
    from emostore.extract.audio_io import stream_audio
    from emostore.sample.clips import speech_clips

    flac = speech_clips()[0]
    x, rate = sf.read(str(flac), dtype="float32")
    m4a = tmp_path / "clip.m4a"
    encode(m4a, x, rate)
    for path, out_rate in ((flac, 16000), (flac, 22050), (m4a, 16000)):
        blocks = list(stream_audio(path, out_rate, block_s=0.5))
        whole = load_audio(path, out_rate)
        joined = np.concatenate(blocks)
        slack = 2 if path == flac else int(0.1 * out_rate)
        assert len(blocks) > 4 and abs(len(joined) - len(whole)) <= slack, (path, out_rate)
        n = min(len(joined), len(whole))
        assert lag(joined[:n], whole[:n]) == 0
        assert np.abs(joined[100:n - 100] - whole[100:n - 100]).max() < 1e-3
    with pytest.raises(MediaError, match="missing file"):
        list(stream_audio(tmp_path / "none.wav"))
