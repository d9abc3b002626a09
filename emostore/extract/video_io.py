"""Frames for the visual encoders: videos sampled at a fixed rate (PyAV), still images (Pillow).

Every frame comes as an RGB ``uint8`` array of shape [H, W, 3] (C-contiguous, as MediaPipe
needs) with its time in milliseconds from the start of the file. A video segment
``[start, end)`` is sampled at ``start + k / fps``; each sample is the frame on screen at that
time. Anything that stops a file from giving those frames raises :class:`MediaError` with one
line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from emostore.extract.media_errors import MediaError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
#: A segment may run this far past the end of the video (rounding in corpus time stamps).
END_TOLERANCE_S = 0.5
MAX_FPS = 1000.0  # timestamps are whole milliseconds and must increase


class Frame(NamedTuple):
    timestamp_ms: int
    image: np.ndarray


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


#: Leading bytes of common video containers: such a file that cannot be opened is corrupt.
_VIDEO_MAGIC = ((4, b"ftyp", "MP4/MOV"), (8, b"AVI ", "AVI"), (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
                (0, b"FLV", "FLV"), (0, b"\x00\x00\x01\xba", "MPEG-PS"), (0, b"\x30\x26\xb2\x75", "ASF/WMV"))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise MediaError(f"missing file: {path}")
    if not path.is_file():
        raise MediaError(f"not a file: {path}")
    if path.stat().st_size == 0:
        raise MediaError(f"empty file: {path} has 0 bytes")


def _unreadable(path: Path, detail: str) -> MediaError:
    """Corrupt when the file starts like a known video container, else an unsupported format."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    for offset, magic, kind in _VIDEO_MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return MediaError(f"corrupt file: {path} looks like {kind} but cannot be read ({detail})")
    return MediaError(f"unsupported format: {path} is not a video or image that FFmpeg or Pillow can read "
                      f"({detail})")


def read_image(path: str | Path) -> np.ndarray:
    """One still image as RGB uint8 [H, W, 3], turned upright by its EXIF orientation."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(f"unsupported format: {path} is not an image Pillow can read (or it is corrupt)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated data, bad headers
        raise MediaError(f"corrupt file: {path} ({exc})") from None
    arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8))
    if arr.size == 0:
        raise MediaError(f"empty image: {path} has no pixels")
    return arr


def sample_times(start: float, end: float, fps: float) -> np.ndarray:
    """Sampling instants ``start + k / fps`` that fall before ``end`` (seconds)."""
    n = max(0, math.ceil((end - start) * fps - 1e-9))
    return start + np.arange(n, dtype=np.float64) / fps


def _check_segment(path: Path, start: float | None, end: float | None,
                   duration: float | None) -> tuple[float, float | None]:
    """The segment to sample, validated against the video's duration (when known)."""
    s = 0.0 if start is None or math.isnan(start) else float(start)
    e = None if end is None or math.isnan(end) else float(end)
    seg = f"[{s:.3f}, {'end' if e is None else f'{e:.3f}'}] s"
    if s < 0:
        raise MediaError(f"segment out of range: {path} {seg} has a negative time")
    if e is not None and e <= s:
        what = "zero-length segment" if e == s else "empty segment (end before start)"
        raise MediaError(f"{what}: {path} {seg}")
    if duration is not None and (s >= duration or (e is not None and e > duration + END_TOLERANCE_S)):
        raise MediaError(f"segment out of range: {path} {seg}, but the video lasts {duration:.3f} s")
    if duration is not None:
        e = duration if e is None else min(e, duration)
    return s, e


def iter_video_frames(path: str | Path, fps: float, start: float | None = None,
                      end: float | None = None) -> Iterator[Frame]:
    """Frames of a video segment sampled at ``fps`` (whole file when start/end are None/NaN)."""
    import av

    path = Path(path)
    if not 0 < fps <= MAX_FPS:
        raise ValueError(f"fps must be in (0, {MAX_FPS:g}], got {fps}")
    _check_file(path)
    try:
        container = av.open(str(path))
    except av.error.EOFError:
        raise MediaError(f"truncated file: {path} ends inside its header") from None
    except av.error.InvalidDataError as exc:
        raise _unreadable(path, f"FFmpeg: {exc.strerror or exc}") from None
    except av.error.FFmpegError as exc:
        raise MediaError(f"unreadable file: {path} ({exc})") from None
    with container:
        if not container.streams.video:
            what = "audio only" if container.streams.audio else "no stream FFmpeg can read"
            raise MediaError(f"no video: {path} has no video stream ({what})")
        stream = container.streams.video[0]
        tb = float(stream.time_base) if stream.time_base else 1e-6
        t0 = float(stream.start_time * tb) if stream.start_time is not None else 0.0
        if stream.duration:
            duration: float | None = float(stream.duration * tb)
        elif container.duration:
            duration = container.duration / 1_000_000
        else:
            duration = None
        seg_start, seg_end = _check_segment(path, start, end, duration)
        frame_s = 1.0 / float(stream.average_rate) if stream.average_rate else 0.1
        yield from _sample(path, container, stream, fps, seg_start, seg_end, t0, tb, duration, frame_s)


def _sample(path: Path, container, stream, fps: float, start: float, end: float | None,  # type: ignore[no-untyped-def]
            t0: float, tb: float, duration: float | None, frame_s: float) -> Iterator[Frame]:
    def target(k: int) -> float | None:
        t = start + k / fps
        return t if end is None or t < end - 1e-9 else None

    def emit(t: float, frame) -> Frame:  # type: ignore[no-untyped-def]
        return Frame(int(round(t * 1000)), np.ascontiguousarray(frame.to_ndarray(format="rgb24")))

    _seek(container, stream, start, t0, tb)
    k, prev, last_t = 0, None, 0.0
    t = target(0)
    for ft, frame in _decoded(path, container, stream, t0):
        while t is not None and t < ft - 1e-6:  # the sample lies before this frame: prev is on screen
            yield emit(t, prev if prev is not None else frame)
            k += 1
            t = target(k)
        if t is None:
            return
        prev, last_t = frame, ft
    if prev is None:
        raise MediaError(f"corrupt file: {path} has a video stream with no decodable frames")
    # the last frame stays on screen for one frame duration
    while t is not None and t < last_t + max(frame_s, 1e-3) + 1e-6:
        yield emit(t, prev)
        k += 1
        t = target(k)
    if t is not None:
        _check_end(path, t, k, start, last_t, duration, frame_s)


def _seek(container, stream, start: float, t0: float, tb: float) -> None:  # type: ignore[no-untyped-def]
    import av

    if start > 0:
        with contextlib.suppress(av.error.FFmpegError):  # unseekable: decode from the beginning instead
            container.seek(int((start + t0) / tb), stream=stream, backward=True)


def _decoded(path: Path, container, stream, t0: float) -> Iterator[tuple[float, Any]]:  # type: ignore[no-untyped-def]
    """``(seconds from the stream's start, frame)`` for each decoded frame; decoding errors as :class:`MediaError`."""
    import av

    last_t = None
    try:
        for frame in container.decode(stream):
            if frame.time is not None:
                last_t = frame.time - t0
                yield last_t, frame
    except av.error.DecoderNotFoundError:
        raise MediaError(f"unsupported codec: {path}: FFmpeg has no decoder for {stream.codec_context.name}") from None
    except av.error.FFmpegError as exc:
        where = f"after {last_t:.2f} s" if last_t is not None else "at the first frame"
        raise MediaError(f"corrupt file: {path}: decoding failed {where} ({exc.strerror or exc})") from None


def _check_end(path: Path, t: float, k: int, start: float, last_t: float, duration: float | None,
               frame_s: float) -> None:
    """After the last frame, samples are still due at ``t``: a truncated file, or a segment past the end."""
    if duration is not None and t < duration - max(frame_s, END_TOLERANCE_S):
        raise MediaError(f"truncated file: {path} holds video up to {last_t:.2f} s, its header declares "
                         f"{duration:.2f} s")
    if k == 0:
        raise MediaError(f"segment out of range: {path} starts at {start:.3f} s, after the last frame "
                         f"({last_t:.3f} s)")


def iter_frames(path: str | Path, fps: float, start: float | None = None,
                end: float | None = None) -> Iterator[Frame]:
    """Frames of any visual media: a still image is one frame at 0 ms (start/end ignored)."""
    if is_image(path):
        yield Frame(0, read_image(path))
    else:
        yield from iter_video_frames(path, fps, start, end)
