"""Speech segments in a stream of PCM audio: a voice-activity detector and the rules that turn its
per-window decisions into utterances.

The detector is Silero VAD (the PyPI ``silero-vad`` wheel ships its TorchScript model; no download)
or, when that is not installed, WebRTC's GMM detector (``webrtcvad-wheels``, no model file). It
scores fixed windows (32 ms for Silero, 30 ms for WebRTC) of 16 kHz mono audio.

:class:`Segmenter` takes audio chunk by chunk, of any size, and returns each segment as soon as it
closes: speech starts when a window's speech probability reaches ``threshold``; it ends once
``min_silence_s`` of windows under ``threshold - 0.15`` follow (so short pauses inside an utterance
do not split it). Segments shorter than ``min_speech_s`` are dropped; the rest get ``pad_s`` of
audio on each side (never overlapping a neighbour). Speech that goes on past ``max_segment_s`` is
cut at its quietest 96 ms after its first third (so no piece is tiny), and the rest continues as a
new segment. Memory is bounded: the segmenter keeps the audio of the open segment only, which is at
most ``max_segment_s`` plus the padding and the closing silence, whatever the length of the stream.
The result does not depend on how the stream was chunked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from emostore.errors import UserError

#: The rate the detectors run at; other rates are resampled to it before segmentation.
RATE = 16000
VADS = ("auto", "silero", "webrtc")
#: Windows averaged when looking for the quietest point of an over-long segment (3 x 32 ms).
QUIET_SPAN = 3


@dataclass(frozen=True)
class SegmenterConfig:
    """How speech is cut into segments (times in seconds)."""

    vad: str = "auto"
    threshold: float = 0.5
    min_speech_s: float = 0.25
    min_silence_s: float = 0.8
    pad_s: float = 0.05
    max_segment_s: float = 15.0
    #: WebRTC's aggressiveness, 0 (keeps most) to 3 (drops most non-speech).
    webrtc_mode: int = 2

    def check(self) -> SegmenterConfig:
        if self.vad not in VADS:
            raise UserError(f"unknown voice-activity detector {self.vad!r}; choose from {', '.join(VADS)}")
        if not 0 < self.threshold < 1:
            raise UserError(f"the speech threshold must be between 0 and 1, got {self.threshold}")
        if self.min_speech_s < 0 or self.pad_s < 0:
            raise UserError("minimum speech and padding must be 0 or more seconds")
        if self.min_silence_s < self.pad_s:
            raise UserError(f"the minimum silence ({self.min_silence_s} s) must be at least the padding "
                            f"({self.pad_s} s): a segment's end padding is silence already heard")
        if self.max_segment_s < max(1.0, 2 * self.min_speech_s):
            raise UserError(f"the maximum segment length must be at least 1 s, got {self.max_segment_s}")
        return self


@dataclass
class Segment:
    """A closed speech segment: sample positions at :data:`RATE` from the start of the stream."""

    id: int
    start_sample: int
    end_sample: int
    audio: np.ndarray
    #: The sample at which the segmenter had heard enough to close it (the end of the closing silence).
    closed_at: int
    #: True when it was cut at ``max_segment_s`` rather than closed by a silence.
    cut: bool = False

    @property
    def start(self) -> float:
        return self.start_sample / RATE

    @property
    def end(self) -> float:
        return self.end_sample / RATE


class Vad(Protocol):
    window: int
    name: str

    def probs(self, windows: list[np.ndarray]) -> list[float]: ...

    def reset(self) -> None: ...


class SileroVad:
    """Silero VAD's TorchScript model on 512-sample windows; one instance per stream (it keeps state)."""

    window = 512
    name = "silero"

    def __init__(self) -> None:
        import torch

        threads = torch.get_num_threads()
        try:
            from silero_vad import load_silero_vad  # its import sets torch's threads to 1
        finally:
            torch.set_num_threads(threads)
        self._torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load's notice
            self.model = load_silero_vad()
        self.model.eval()

    def probs(self, windows: list[np.ndarray]) -> list[float]:
        """Speech probabilities of consecutive windows. The model is tiny: spread over several
        threads it is slower, and much slower on a busy machine, so this thread runs it on one
        (PyTorch's thread count is per calling thread with OpenMP; it is restored after)."""
        torch = self._torch
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                return [float(self.model(torch.from_numpy(w), RATE)) for w in windows]
        finally:
            torch.set_num_threads(threads)

    def reset(self) -> None:
        self.model.reset_states()


class WebRtcVad:
    """WebRTC's detector on 30 ms windows: a probability of 0 or 1."""

    window = 480
    name = "webrtc"

    def __init__(self, mode: int = 2) -> None:
        import webrtcvad

        self.vad = webrtcvad.Vad(mode)

    def probs(self, windows: list[np.ndarray]) -> list[float]:
        out = []
        for w in windows:
            pcm = (np.clip(w, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
            out.append(1.0 if self.vad.is_speech(pcm, RATE) else 0.0)
        return out

    def reset(self) -> None:
        pass


def load_vad(name: str = "auto", webrtc_mode: int = 2) -> Vad:
    """A fresh detector: ``silero``, ``webrtc``, or ``auto`` (Silero when installed, else WebRTC)."""
    if name in ("auto", "silero"):
        try:
            return SileroVad()
        except ModuleNotFoundError:
            if name == "silero":
                raise UserError("the silero VAD needs the silero-vad package: pip install 'emostore[audio]'") from None
    try:
        return WebRtcVad(webrtc_mode)
    except ModuleNotFoundError:
        raise UserError("speech segmentation needs silero-vad or webrtcvad-wheels: "
                        "pip install 'emostore[audio]'") from None


class Segmenter:
    """Feed 16 kHz mono float32 audio with :meth:`feed`; :meth:`flush` at the end of the stream."""

    def __init__(self, config: SegmenterConfig | None = None, vad: Vad | None = None) -> None:
        self.config = (config or SegmenterConfig()).check()
        self.vad = vad or load_vad(self.config.vad, self.config.webrtc_mode)
        c, w = self.config, self.vad.window
        self.neg_threshold = max(c.threshold - 0.15, 0.01)
        self._min_speech = int(c.min_speech_s * RATE)
        self._min_silence = int(c.min_silence_s * RATE)
        self._pad = int(c.pad_s * RATE)
        self._max = int(c.max_segment_s * RATE)
        #: The most audio ever kept: a whole segment, its padding, the closing silence and a window.
        self.capacity = self._max + 2 * self._pad + self._min_silence + 2 * w
        self.reset()

    def reset(self) -> None:
        """Forget the stream (the detector too), ready for a new one."""
        self.vad.reset()
        self._buf = np.zeros(self.capacity, np.float32)
        self._origin = 0  # stream sample at _buf[0]
        self._n = 0  # samples held in _buf
        self._scored = 0  # stream samples already scored by the detector
        self._last_end = 0  # end of the last emitted segment (the next may not start before it)
        self._next_id = 0
        self._start: int | None = None  # start of the open speech segment
        self._silence_from: int | None = None  # start of the silence that may end it
        self._quiet: list[tuple[int, float]] = []  # (window start, rms) of the open segment's windows

    @property
    def samples_seen(self) -> int:
        return self._origin + self._n

    @property
    def last_end(self) -> int:
        """End of the last segment returned (no later segment starts before it)."""
        return self._last_end

    @property
    def next_id(self) -> int:
        """The id the next segment will get."""
        return self._next_id

    @property
    def in_speech(self) -> bool:
        return self._start is not None

    def open_segment(self) -> tuple[int, np.ndarray] | None:
        """(start sample, audio so far) of the segment being spoken, for partial results; None in silence."""
        if self._start is None:
            return None
        start = max(self._last_end, self._start - self._pad)
        return start, self._slice(start, self.samples_seen).copy()

    def feed(self, audio: np.ndarray) -> list[Segment]:
        """Add samples; returns the segments that closed."""
        out: list[Segment] = []
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        w = self.vad.window
        while audio.size:
            take = min(audio.size, self.capacity - self._n)
            if take == 0:
                self._compact()
                continue
            self._buf[self._n:self._n + take] = audio[:take]
            self._n += take
            audio = audio[take:]
            starts = range(self._scored, self.samples_seen - w + 1, w)
            windows = [self._slice(a, a + w) for a in starts]
            for a, window, prob in zip(starts, windows, self.vad.probs(windows) if windows else []):
                seg = self._step(a, prob, float(np.sqrt(np.mean(window ** 2))))
                self._scored = a + w
                if seg is not None:
                    out.append(seg)
        return out

    def flush(self) -> list[Segment]:
        """The end of the stream: closes the open segment (if long enough) and resets."""
        out: list[Segment] = []
        if self._start is not None:
            end = self._silence_from if self._silence_from is not None else self.samples_seen
            seg = self._emit(self._start, end, self.samples_seen, pad_start=True,
                             pad_end=min(self._pad, self.samples_seen - end))
            if seg is not None:
                out.append(seg)
        nxt = self._next_id
        self.reset()
        self._next_id = nxt
        return out

    # ----- the state machine ---------------------------------------------------------------
    def _step(self, at: int, prob: float, rms: float) -> Segment | None:
        w = self.vad.window
        if self._start is None:
            if prob >= self.config.threshold:
                self._start, self._silence_from, self._quiet = at, None, [(at, rms)]
            return None
        self._quiet.append((at, rms))
        if prob >= self.config.threshold:
            self._silence_from = None
        elif prob < self.neg_threshold and self._silence_from is None:
            self._silence_from = at
        if self._silence_from is not None and at + w - self._silence_from >= self._min_silence:
            start, end = self._start, self._silence_from
            self._start = None
            return self._emit(start, end, at + w, pad_start=True, pad_end=self._pad)
        if at + w - self._start >= self._max:
            return self._cut(at + w)
        return None

    def _cut(self, now: int) -> Segment | None:
        """The open segment reached the maximum length: end it at its quietest point after the first third."""
        w = self.vad.window
        start = self._start
        assert start is not None
        late = [(i, a) for i, (a, _) in enumerate(self._quiet) if a >= start + self._max // 3]
        rms = np.array([r for _, r in self._quiet], dtype=np.float64)
        smooth = np.convolve(rms, np.ones(QUIET_SPAN) / QUIET_SPAN, mode="same")
        i, _ = min(late, key=lambda p: smooth[p[0]]) if late else (len(self._quiet) - 1, 0)
        cut = self._quiet[i][0] + w // 2
        rest = self._quiet[i:]  # the windows of the new segment
        seg = self._emit(start, cut, now, pad_start=True, pad_end=0, cut=True)
        self._start, self._quiet = cut, rest
        if self._silence_from is not None and self._silence_from < cut:
            self._silence_from = cut
        return seg

    def _emit(self, start: int, end: int, closed_at: int, *, pad_start: bool, pad_end: int,
              cut: bool = False) -> Segment | None:
        self._quiet = []
        if end - start < self._min_speech and not cut:
            return None
        s = max(self._last_end, start - (self._pad if pad_start else 0), self._origin)
        e = min(end + pad_end, self.samples_seen)
        self._last_end = e
        seg = Segment(self._next_id, s, e, self._slice(s, e).copy(), closed_at, cut)
        self._next_id += 1
        return seg

    # ----- the buffer ----------------------------------------------------------------------
    def _slice(self, a: int, b: int) -> np.ndarray:
        return self._buf[a - self._origin:b - self._origin]

    def _compact(self) -> None:
        """Drop audio no segment can need any more: before the open segment's padding, or, in silence,
        before the padding that speech starting at the next window would get."""
        keep = (self._start if self._start is not None else self._scored) - self._pad
        drop = min(max(keep, self._origin), self._scored) - self._origin
        if drop <= 0:
            raise RuntimeError("segmenter buffer full: the open segment exceeds its bound")  # a bug, not input
        self._buf[:self._n - drop] = self._buf[drop:self._n]
        self._n -= drop
        self._origin += drop
