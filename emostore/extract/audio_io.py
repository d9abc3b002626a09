"""Mono float32 audio at a chosen rate from audio files and from the audio track of videos.

libsndfile (``soundfile``) reads WAV, FLAC, OGG and MP3; anything it does not recognise goes to
FFmpeg (PyAV), which also reads the audio track of MP4, AVI, MKV and the like. Channels are
averaged to mono and the result is resampled with libsoxr (``soxr``, high quality). Every reason
the requested audio cannot be produced is a :class:`MediaError` with a one-line reason naming
the file.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emostore.extract.media_errors import MediaError

if TYPE_CHECKING:
    from av.audio.frame import AudioFrame
    from av.audio.stream import AudioStream
    from av.container import InputContainer

__all__ = ["MediaError", "audio_duration", "load_audio", "stream_audio"]

#: A segment may end this far past the end of the media (timestamps are often rounded); the
#: excess is dropped. Further out, the segment is out of range.
END_SLACK_S = 0.1
#: Decoded audio may fall this far short of the length a file declares before it counts as
#: truncated (codec delay and padding).
SHORT_READ_S = 0.05
#: Seek instead of decoding from the beginning when a segment starts this late in a file.
SEEK_AFTER_S = 1.0
RESAMPLE_QUALITY = "HQ"
#: Writers that stream WAV to a pipe put a placeholder at least this big (or 0) as the data size.
STREAMED_WAV_SIZE = 0x7FFF0000
#: FFmpeg demuxers of still images (read as a one-frame video without audio).
_IMAGE_DEMUXERS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "gif", "webp_pipe", "tiff_pipe"}


@dataclass
class _Segment:
    """Requested span in seconds (``end`` None: to the end of the media)."""

    path: Path
    start: float
    end: float | None

    def describe(self) -> str:
        end = "end" if self.end is None else f"{self.end:.3f}"
        return f"[{self.start:.3f}, {end}] s"


def load_audio(path: str | Path, sample_rate: int = 16000, start: float | None = None,
               end: float | None = None) -> np.ndarray:
    """Mono float32 samples of ``path`` at ``sample_rate``, cut to [start, end] seconds if given.

    Raises :class:`MediaError` for a missing, corrupt, truncated or unsupported file, a file
    without an audio track, and an empty or out-of-range segment.
    """
    path = Path(path)
    if not path.exists():
        raise MediaError(f"missing file: {path}")
    if not path.is_file():
        raise MediaError(f"not a file: {path}")
    seg = _segment(path, start, end)
    try:
        try:
            signal, rate = _read_soundfile(seg)
        except _NotRecognised as sf_err:
            try:
                signal, rate = _read_av(seg)
            except _NotRecognised as av_err:
                raise _open_failure(path, str(sf_err), str(av_err)) from None
    except OSError as exc:  # permissions, I/O errors
        raise MediaError(f"unreadable file: {path} ({exc.strerror or exc})") from None
    if signal.size == 0:
        raise MediaError(f"empty audio: {path} {seg.describe()} holds no samples")
    if rate != sample_rate:
        import soxr

        signal = soxr.resample(signal, rate, sample_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(signal, dtype=np.float32)


def stream_audio(path: str | Path, sample_rate: int = 16000, block_s: float = 5.0) -> Iterator[np.ndarray]:
    """The whole audio of ``path`` as mono float32 blocks of about ``block_s`` seconds at ``sample_rate``,
    decoded and resampled (libsoxr, streaming) a block at a time, so memory does not grow with the file.

    Raises :class:`MediaError` as :func:`load_audio` does (possibly after some blocks were yielded)."""
    import soxr

    path = Path(path)
    if not path.is_file():
        raise MediaError(f"missing file: {path}" if not path.exists() else f"not a file: {path}")
    resampler: soxr.ResampleStream | None = None
    got = 0
    for block, rate in _blocks(path, block_s):
        if resampler is None and rate != sample_rate:
            resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        out = block if resampler is None else resampler.resample_chunk(block)
        got += len(block)
        if len(out):
            yield np.ascontiguousarray(out, dtype=np.float32)
    if resampler is not None:
        tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        if len(tail):
            yield tail.astype(np.float32)
    if got == 0:
        raise MediaError(f"empty audio: {path} holds no samples")


def _blocks(path: Path, block_s: float) -> Iterator[tuple[np.ndarray, int]]:
    """(mono block, its rate) from libsndfile, or from FFmpeg for what libsndfile cannot open."""
    import soundfile as sf

    try:
        f = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError) as sf_err:
        yield from _av_blocks(path, str(getattr(sf_err, "error_string", None) or sf_err))
        return
    with f:
        rate = int(f.samplerate)
        try:
            for block in f.blocks(blocksize=max(1, int(block_s * rate)), dtype="float32", always_2d=True):
                yield block.mean(axis=1), rate
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise MediaError(f"corrupt or truncated file: {path} ({exc})") from None


def _av_blocks(path: Path, sf_reason: str) -> Iterator[tuple[np.ndarray, int]]:
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, EOFError) as exc:
        raise _open_failure(path, sf_reason, str(getattr(exc, "strerror", None) or exc)) from None
    with container:
        if not container.streams.audio:
            what = "is an image" if container.format.name in _IMAGE_DEMUXERS else "has no audio track"
            raise MediaError(f"no audio: {path} {what}")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                yield _mono(frame), frame.sample_rate
        except av.error.FFmpegError as exc:
            raise MediaError(f"corrupt file: {path}: decoding failed ({exc.strerror or exc})") from None


def audio_duration(path: str | Path) -> float | None:
    """The duration a file declares, in seconds (None when it declares none or cannot be opened)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        return float(info.duration)
    except (sf.LibsndfileError, RuntimeError):
        pass
    try:
        import av

        with av.open(str(path)) as container:
            if container.streams.audio and container.streams.audio[0].duration:
                s = container.streams.audio[0]
                return float(s.duration * s.time_base)
            return container.duration / 1_000_000 if container.duration else None
    except Exception:  # noqa: BLE001  (only for a progress bar's total)
        return None


class _NotRecognised(Exception):
    """This reader cannot open the file at all (the other reader may)."""


def _segment(path: Path, start: float | None, end: float | None) -> _Segment:
    s = 0.0 if start is None or math.isnan(start) else float(start)
    e = None if end is None or math.isnan(end) else float(end)
    seg = _Segment(path, s, e)
    if s < 0 or (e is not None and e < 0):
        raise MediaError(f"segment out of range: {path} {seg.describe()} has a negative time")
    if e is not None and e <= s:
        what = "zero-length segment" if e == s else "empty segment (end before start)"
        raise MediaError(f"{what}: {path} {seg.describe()}")
    return seg


def _check_range(seg: _Segment, duration: float) -> float:
    """Validate the segment against the declared duration; returns the time to read up to."""
    if seg.start >= duration or (seg.end is not None and seg.end > duration + END_SLACK_S):
        raise MediaError(f"segment out of range: {seg.path} {seg.describe()}, but the media lasts "
                         f"{duration:.3f} s")
    return duration if seg.end is None else min(seg.end, duration)


def _truncated(seg: _Segment, got_s: float, declared_s: float) -> MediaError:
    where = f" (segment {seg.describe()})" if seg.start > 0 or seg.end is not None else ""
    return MediaError(f"truncated file: {seg.path} holds {got_s:.3f} s of audio, its header declares "
                      f"{declared_s:.3f} s{where}")


# ----- libsndfile -------------------------------------------------------------------------------
def _read_soundfile(seg: _Segment) -> tuple[np.ndarray, int]:
    import soundfile as sf

    try:
        f = sf.SoundFile(str(seg.path))
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _NotRecognised(getattr(exc, "error_string", None) or str(exc)) from None
    with f:
        rate = int(f.samplerate)
        present = int(f.frames)
        # MPEG frame counts are estimates; WAV counts come from the file size, so use the header
        exact = f.format != "MP3"
        declared = (_wav_declared_frames(seg.path) if f.format in ("WAV", "WAVEX") else None) or present
        stop = _check_range(seg, declared / rate)
        i0 = int(round(seg.start * rate))
        i1 = int(round(stop * rate))
        if exact and i1 > present + SHORT_READ_S * rate:
            raise _truncated(seg, present / rate, declared / rate)
        try:
            f.seek(min(i0, present))
            x = f.read(max(0, min(i1, present) - i0), dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise MediaError(f"corrupt or truncated file: {seg.path} ({exc})") from None
    if exact and len(x) < min(i1, present) - i0 - SHORT_READ_S * rate:
        raise _truncated(seg, (i0 + len(x)) / rate, declared / rate)
    if not exact and len(x) == 0 and seg.start > 0:
        raise MediaError(f"segment out of range: {seg.path} {seg.describe()} starts after the audio ends")
    return x.mean(axis=1), rate


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF header's ``data`` chunk declares (None when unknown or not plain RIFF)."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            hdr = fh.read(8)
            if len(hdr) < 8:
                return None
            tag, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if tag == b"fmt ":
                fmt = fh.read(size + (size & 1))
                block_align = struct.unpack("<H", fmt[12:14])[0] if len(fmt) >= 14 else None
            elif tag == b"data":
                if not block_align or size == 0 or size >= STREAMED_WAV_SIZE:
                    return None
                return size // block_align
            else:
                fh.seek(size + (size & 1), 1)


# ----- FFmpeg (PyAV) ----------------------------------------------------------------------------
def _read_av(seg: _Segment) -> tuple[np.ndarray, int]:
    import av

    try:
        container = av.open(str(seg.path))
    except (av.error.FFmpegError, EOFError) as exc:
        raise _NotRecognised(getattr(exc, "strerror", None) or str(exc)) from None
    with container:
        if not container.streams.audio:
            streams = ", ".join(f"{s.type} {s.codec_context.name if s.codec_context else '?'}"
                                for s in container.streams) or "none"
            what = "is an image" if container.format.name in _IMAGE_DEMUXERS else "has no audio track"
            raise MediaError(f"no audio: {seg.path} {what} (streams: {streams})")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise MediaError(f"unsupported codec: {seg.path}: FFmpeg has no decoder for its audio stream")
        declared: float | None = None
        if stream.duration and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif container.duration:
            declared = container.duration / 1_000_000
        stop = _check_range(seg, declared) if declared is not None else seg.end
        try:
            samples, rate, origin = _decode(container, stream, seg.start, stop)
        except av.error.DecoderNotFoundError:
            raise MediaError(f"unsupported codec: {seg.path}: no decoder for "
                             f"{stream.codec_context.name}") from None
        except av.error.FFmpegError as exc:
            raise MediaError(f"corrupt file: {seg.path}: decoding failed ({exc.strerror or exc})") from None
    if rate == 0:
        raise MediaError(f"empty audio: {seg.path} has an audio track with no decodable samples")
    got_end = origin + len(samples) / rate
    want_end = stop if stop is not None else got_end
    if want_end > got_end + SHORT_READ_S:
        if declared is not None and declared > got_end + SHORT_READ_S:
            raise _truncated(seg, got_end, declared)
        raise MediaError(f"segment out of range: {seg.path} {seg.describe()}, but the audio ends at "
                         f"{got_end:.3f} s")
    i0 = max(0, int(round((seg.start - origin) * rate)))
    i1 = int(round((want_end - origin) * rate))
    return samples[i0:i1], rate


def _decode(container: InputContainer, stream: AudioStream, start: float,
            stop: float | None) -> tuple[np.ndarray, int, float]:
    """Decode ``stream`` from about ``start`` to ``stop``: (mono samples, rate, time of sample 0)."""
    if start >= SEEK_AFTER_S and stream.time_base:
        container.seek(int(start / stream.time_base), stream=stream)
        samples, rate, origin = _collect(container, stream, stop)
        if origin is not None and origin <= start:
            return samples, rate, origin
        container.seek(0, stream=stream)  # no timestamps, or the seek went past the start
    samples, rate, origin = _collect(container, stream, stop)
    return samples, rate, 0.0 if origin is None else origin


def _collect(container: InputContainer, stream: AudioStream,
             stop: float | None) -> tuple[np.ndarray, int, float | None]:
    """Decode until ``stop``: (mono samples, rate, time of the first frame or None)."""
    parts: list[np.ndarray] = []
    rate, origin, total = 0, None, 0
    for frame in container.decode(stream):
        if not parts:
            rate, origin = frame.sample_rate, frame.time
        parts.append(_mono(frame))
        total += frame.samples
        if stop is not None and (origin or 0.0) + total / rate >= stop:
            break
    return (np.concatenate(parts) if parts else np.zeros(0, np.float32)), rate, origin


_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}


def _mono(frame: AudioFrame) -> np.ndarray:
    """One decoded frame as mono float32 in [-1, 1]."""
    a = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:
        a = a.reshape(-1, channels).T
    name = frame.format.name.rstrip("p")
    if name in _INT_SCALE:
        a = a.astype(np.float64)
        if name == "u8":
            a = a - 128.0
        a = a / _INT_SCALE[name]
    return a.mean(axis=0).astype(np.float32)


# ----- reasons for files neither reader opens ---------------------------------------------------
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"RIFF", "WAV/AVI"), (0, b"RIFX", "WAV"), (0, b"RF64", "WAV"), (0, b"fLaC", "FLAC"),
    (0, b"OggS", "Ogg"), (0, b"ID3", "MP3"), (0, b"FORM", "AIFF"), (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"), (0, b"\x30\x26\xb2\x75", "ASF/WMA"),
]


def _open_failure(path: Path, sf_reason: str, av_reason: str) -> MediaError:
    """Corrupt when the file starts like a known container; otherwise an unsupported format."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        return MediaError(f"empty file: {path} has 0 bytes")
    for offset, magic, kind in _MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return MediaError(f"corrupt file: {path} looks like {kind} but cannot be read "
                              f"(libsndfile: {sf_reason}; FFmpeg: {av_reason})")
    return MediaError(f"unsupported format: {path} is not audio or video that libsndfile or FFmpeg "
                      f"can read (libsndfile: {sf_reason}; FFmpeg: {av_reason})")
