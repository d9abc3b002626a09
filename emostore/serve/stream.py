"""``/stream``: live audio over a WebSocket, cut into speech segments, each predicted as it closes.

The protocol (also in the README, "Real time"):

- first client message, JSON: ``{"sample_rate": 16000, "encoding": "pcm_s16le"|"f32le", "channels": 1}``,
  optionally ``"conversation"`` (segments become turns of that conversation) and ``"partial_every_s"``;
- then binary audio frames, JSON ``{"type": "text", "text", "start", "end"}`` (transcript),
  ``{"type": "frame", "t", "jpeg"}`` (a base64 JPEG video frame) and finally ``{"type": "end"}``;
- server messages: ``segment`` as each segment closes, ``partial`` during long speech when asked,
  ``error`` for a bad message (the stream goes on), ``done`` after ``end``, then a normal close.
- misuse closes the socket with a code and a reason: a bad first message (1007), binary audio before
  it (1002), audio faster than ``max_stream_rate`` times real time (1008), a frame over the size limit
  (1009), one stream beyond ``max_streams`` (1013).

The event loop only receives and sends: decoding, resampling and voice-activity detection run in a
small thread pool, and each segment is written as a WAV file (with its video frames as an MJPEG
video, when the checkpoint reads faces) and predicted by the server's batcher, like a ``/predict``
upload; its result is therefore what ``/predict`` gives for the same audio. Each stream holds at
most one open segment of audio, a bounded list of transcript pieces and frames, and the segments in
prediction; a client that disconnects frees all of it at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from emostore.errors import UserError
from emostore.extract.segment import RATE, Segment, Segmenter, SegmenterConfig, Vad, load_vad
from emostore.serve.batcher import Busy, Job
from emostore.serve.predictor import Inputs
from emostore.serve.timeline import Piece, present_modalities, text_for

log = logging.getLogger("emostore.serve")

SAMPLE_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)
DTYPES = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
#: WebSocket close codes (RFC 6455).
NORMAL, PROTOCOL_ERROR, INVALID_DATA, POLICY = 1000, 1002, 1007, 1008
TOO_BIG, SERVER_ERROR, TRY_LATER = 1009, 1011, 1013


class Misuse(Exception):
    """Close the stream with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code, self.reason = code, reason[:120]  # a close reason has at most 123 bytes


class StreamConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_rate: int
    encoding: Literal["pcm_s16le", "f32le"] = "pcm_s16le"
    channels: int = Field(default=1, ge=1, le=8)
    conversation: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    partial_every_s: float | None = Field(default=None, ge=0.5, le=60)


class TextMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str = Field(max_length=2000)
    start: float = Field(ge=0)
    end: float = Field(ge=0)


class FrameMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["frame"]
    t: float = Field(ge=0)
    jpeg: str


@dataclass
class StreamLimits:
    max_streams: int = 8
    #: Audio may arrive at most this many times faster than real time (after ``burst_s`` seconds of slack).
    max_rate: float = 4.0
    burst_s: float = 2.0
    max_message_bytes: int = 1 << 20
    max_texts: int = 1000
    #: Frames closer together than 1 / max_fps seconds are dropped.
    max_fps: float = 10.0
    config_timeout_s: float = 30.0


class Hub:
    """The streams of one server: their limits, the segmenter settings, detectors to reuse, and the threads."""

    def __init__(self, engine: Any, limits: StreamLimits | None = None, segmenter: SegmenterConfig | None = None,
                 touch_conversation: Callable[[str], None] | None = None):
        self.engine = engine
        self.limits = limits or StreamLimits()
        self.segmenter = (segmenter or SegmenterConfig()).check()
        self.touch_conversation = touch_conversation or (lambda _: None)
        self.visual = any(f.startswith("visual/") for f in engine.info.get("feature_sets", []))
        self.open = 0
        self.pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="emostore-stream")
        self._tmp: Path | None = None  # made for the first stream with video frames
        self._vads: list[Vad] = []
        self._ids = 0

    def summary(self) -> dict[str, Any]:
        return {"open": self.open, "max": self.limits.max_streams, "max_rate": self.limits.max_rate}

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def take_vad(self) -> Vad:
        return self._vads.pop() if self._vads else load_vad(self.segmenter.vad, self.segmenter.webrtc_mode)

    def give_vad(self, vad: Vad) -> None:
        if len(self._vads) < self.limits.max_streams:
            vad.reset()
            self._vads.append(vad)

    @property
    def tmp(self) -> Path:
        """The streams' temporary folder (one per server, removed at shutdown)."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="emostore-streams-"))
        return self._tmp

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    async def handle(self, ws: WebSocket) -> None:
        """One client, from the handshake to the close."""
        await ws.accept()
        if self.open >= self.limits.max_streams:
            await ws.close(TRY_LATER, f"server full: {self.open} streams open "
                                      f"(--max-streams {self.limits.max_streams})")
            return
        self.open += 1
        self._ids += 1
        folder = self.tmp / f"s{self._ids}"
        stream: Stream | None = None
        try:
            config = await self._config(ws)
            vad = await self.run(self.take_vad)
            stream = Stream(self, ws, config, Segmenter(self.segmenter, vad), folder)
            await stream.serve()
        except Misuse as exc:
            await _close(ws, exc.code, exc.reason)
        except WebSocketDisconnect:
            pass
        except Exception as exc:  # noqa: BLE001  (one stream's bug must not take the server down)
            log.exception("stream failed")
            await _close(ws, SERVER_ERROR, f"server error: {type(exc).__name__}")
        finally:
            self.open -= 1
            if stream is not None:
                await stream.release()

    async def _config(self, ws: WebSocket) -> StreamConfig:
        try:
            msg = await asyncio.wait_for(ws.receive(), self.limits.config_timeout_s)
        except TimeoutError:
            raise Misuse(POLICY, f"no config message within {self.limits.config_timeout_s:.0f} s") from None
        if msg["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(msg.get("code", 1000))
        if msg.get("bytes") is not None:
            raise Misuse(PROTOCOL_ERROR, "binary audio before the config message; send the JSON config first")
        try:
            config = StreamConfig.model_validate_json(msg.get("text") or "")
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "message"
            raise Misuse(INVALID_DATA, f"bad config message: {where}: {err['msg']}") from None
        if config.sample_rate not in SAMPLE_RATES:
            raise Misuse(INVALID_DATA, f"unsupported sample_rate {config.sample_rate}; use one of "
                                       f"{', '.join(map(str, SAMPLE_RATES))}")
        return config


@dataclass
class Stream:
    """One open stream: its audio pipeline, transcript, frames and the messages waiting to be sent."""

    hub: Hub
    ws: WebSocket
    config: StreamConfig
    segmenter: Segmenter
    folder: Path
    texts: list[Piece] = field(default_factory=list)
    frames: list[tuple[float, bytes]] = field(default_factory=list)
    received: int = 0  # input samples (per channel)
    segments: int = 0
    started: float | None = None
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    tasks: set[asyncio.Task] = field(default_factory=set)
    partial: asyncio.Task | None = None
    last_partial: int = 0
    warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        import soxr

        self.folder.mkdir(parents=True)
        self.dtype = DTYPES[self.config.encoding]
        self.leftover = b""
        self.resampler = None if self.config.sample_rate == RATE else \
            soxr.ResampleStream(self.config.sample_rate, RATE, 1, dtype="float32", quality="HQ")

    async def serve(self) -> None:
        sender = self._track(asyncio.create_task(self._send_loop()))
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await self._audio(msg["bytes"])
            elif await self._message(msg.get("text") or ""):
                break
        for seg in await self.hub.run(self.segmenter.flush):
            self._segment(seg)
        await self.outbox.put(None)
        await sender
        await _close(self.ws, NORMAL, "done")

    # ----- client messages -------------------------------------------------------------------
    async def _audio(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        lim = self.hub.limits
        if len(data) > lim.max_message_bytes:
            raise Misuse(TOO_BIG, f"audio message of {len(data)} bytes; send at most {lim.max_message_bytes}")
        now = loop.time()
        self.started = now if self.started is None else self.started
        self.received += len(data) // (self.dtype.itemsize * self.config.channels)
        ahead = self.received / self.config.sample_rate - lim.max_rate * (now - self.started)
        if ahead > lim.burst_s:
            raise Misuse(POLICY, f"audio arrives faster than {lim.max_rate:g}x real time (--max-stream-rate)")
        segments, snapshot = await self.hub.run(self._ingest, data)
        for seg in segments:
            self._segment(seg)
        if snapshot is not None:
            self._partial(*snapshot)

    def _ingest(self, data: bytes) -> tuple[list[Segment], tuple[int, np.ndarray] | None]:
        """(In a pool thread.) Decode, downmix, resample and segment; a snapshot of long open speech when a
        partial result is due."""
        data = self.leftover + data
        frame = self.dtype.itemsize * self.config.channels
        usable = len(data) - len(data) % frame
        self.leftover = data[usable:]
        x = np.frombuffer(data[:usable], dtype=self.dtype).astype(np.float32)
        if self.dtype.kind == "i":
            x /= 32768.0
        x = np.nan_to_num(x.reshape(-1, self.config.channels).mean(axis=1), nan=0.0, posinf=0.0, neginf=0.0)
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        segments = self.segmenter.feed(x)
        every = self.config.partial_every_s
        open_seg = self.segmenter.open_segment() if every else None
        if open_seg is None or self.partial is not None:
            return segments, None
        start, audio = open_seg
        since = max(start, self.last_partial)
        if (start + len(audio) - since) / RATE < every:  # type: ignore[operator]
            return segments, None
        self.last_partial = start + len(audio)
        return segments, open_seg

    async def _message(self, text: str) -> bool:
        """A JSON message; True at ``end``. A bad one gets an ``error`` message and the stream goes on."""
        try:
            kind = json.loads(text).get("type")
        except (ValueError, AttributeError):
            await self._error("a text message must be a JSON object with a type: text, frame or end")
            return False
        try:
            if kind == "end":
                return True
            if kind == "text":
                self._text(TextMessage.model_validate_json(text))
            elif kind == "frame":
                self._frame(FrameMessage.model_validate_json(text))
            else:
                await self._error(f"unknown message type {kind!r}; expected text, frame or end")
        except ValidationError as exc:
            err = exc.errors()[0]
            await self._error(f"bad {kind} message: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}")
        except UserError as exc:
            await self._error(str(exc))
        return False

    def _text(self, msg: TextMessage) -> None:
        if msg.end < msg.start:
            raise UserError(f"bad text message: end {msg.end} is before start {msg.start}")
        done = self.segmenter.last_end / RATE
        self.texts = [p for p in self.texts if p.middle >= done]  # pieces of closed segments are spent
        if len(self.texts) >= self.hub.limits.max_texts:
            raise UserError(f"more than {self.hub.limits.max_texts} transcript pieces wait for their audio; "
                            "this one is dropped")
        self.texts.append(Piece(msg.start, msg.end, msg.text))

    def _frame(self, msg: FrameMessage) -> None:
        if not self.hub.visual:
            if "frame" not in self.warned:
                self.warned.add("frame")
                raise UserError("this checkpoint has no visual feature set: video frames are not used")
            return
        try:
            jpeg = base64.b64decode(msg.jpeg, validate=True)
        except (binascii.Error, ValueError):
            raise UserError("bad frame message: jpeg is not base64") from None
        if jpeg[:2] != b"\xff\xd8":
            raise UserError("bad frame message: jpeg does not hold a JPEG image")
        if self.frames and msg.t < self.frames[-1][0] + 1 / self.hub.limits.max_fps:
            return
        open_seg = self.segmenter.open_segment()
        keep_from = (open_seg[0] / RATE) if open_seg else self.segmenter.samples_seen / RATE - 1.0
        self.frames = [f for f in self.frames if f[0] >= keep_from] + [(msg.t, jpeg)]

    async def _error(self, message: str) -> None:
        await self.outbox.put(_ready({"type": "error", "message": message}))

    # ----- predictions -------------------------------------------------------------------------
    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _segment(self, seg: Segment) -> None:
        self.segments += 1
        self.outbox.put_nowait(self._track(asyncio.create_task(
            self._predict(seg.id, seg.start_sample, seg.end_sample, seg.audio, final=True))))

    def _partial(self, start: int, audio: np.ndarray) -> None:
        task = self._track(asyncio.create_task(self._predict(self.segmenter.next_id, start, start + len(audio),
                                                             audio, final=False)))
        self.partial = task
        task.add_done_callback(lambda _: setattr(self, "partial", None))
        self.outbox.put_nowait(task)

    async def _predict(self, sid: int, start: int, end: int, audio: np.ndarray, final: bool) -> dict[str, Any]:
        t0, t1 = start / RATE, end / RATE
        name = f"{sid}{'' if final else f'-partial-{end}'}"
        frames = [f for f in self.frames if t0 <= f[0] <= t1] if self.hub.visual else []
        wav, video = await self.hub.run(_write_inputs, self.folder, name, audio, frames, t0)
        text = text_for(t0, t1, self.texts)
        conv = self.config.conversation if final else None
        job = Job("turn" if conv else "predict", Inputs(text=text, audio=wav, video=video), conversation=conv)
        msg: dict[str, Any] = {"type": "segment" if final else "partial", "id": sid, "start": t0, "end": t1}
        try:
            if conv:
                self.hub.touch_conversation(conv)
            result = await asyncio.wrap_future(self.hub.engine.submit(job))
        except (UserError, Busy) as exc:
            return {"type": "error", "message": f"segment {sid} [{t0:.2f}, {t1:.2f}] s: {exc}"}
        except Exception as exc:  # noqa: BLE001  (reported to the client; the stream goes on)
            log.error("stream segment failed: %s: %s", type(exc).__name__, exc)
            return {"type": "error", "message": f"segment {sid} [{t0:.2f}, {t1:.2f}] s: server error"}
        finally:
            wav.unlink(missing_ok=True)
            if video is not None:
                video.unlink(missing_ok=True)
        for key in ("label", "score", "probabilities"):
            if key in result:
                msg[key] = result[key]
        msg["modalities"] = present_modalities(result)
        return msg

    async def _send_loop(self) -> None:
        """Send results in the order their segments closed (errors and partials in between)."""
        while (item := await self.outbox.get()) is not None:
            await self.ws.send_text(json.dumps(await item))
        await self.ws.send_text(json.dumps({"type": "done", "segments": self.segments}))

    async def release(self) -> None:
        """Free everything: pending predictions are dropped, files removed, the detector goes back to the pool."""
        for task in list(self.tasks):
            task.cancel()
        while not self.outbox.empty():
            self.outbox.get_nowait()
        self.texts, self.frames = [], []
        await self.hub.run(shutil.rmtree, self.folder, True)
        self.hub.give_vad(self.segmenter.vad)


def _ready(message: dict[str, Any]) -> asyncio.Future:
    fut = asyncio.get_running_loop().create_future()
    fut.set_result(message)
    return fut


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state != WebSocketState.DISCONNECTED and ws.client_state != WebSocketState.DISCONNECTED:
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await ws.close(code, reason)


def _write_inputs(folder: Path, name: str, audio: np.ndarray, frames: list[tuple[float, bytes]],
                  t0: float) -> tuple[Path, Path | None]:
    """(In a pool thread.) The segment's audio as a float WAV, and its frames as an MJPEG video (or None)."""
    import soundfile as sf

    wav = folder / f"{name}.wav"
    sf.write(str(wav), audio, RATE, subtype="FLOAT")
    if not frames:
        return wav, None
    video = folder / f"{name}.mkv"
    write_mjpeg(video, [(t - t0, jpeg) for t, jpeg in frames])
    return wav, video


def write_mjpeg(path: Path, frames: list[tuple[float, bytes]]) -> None:
    """JPEG frames at their times (seconds) into a Matroska file, as they are (no re-encoding)."""
    import io
    from fractions import Fraction

    import av
    from PIL import Image

    width, height = Image.open(io.BytesIO(frames[0][1])).size
    tb = Fraction(1, 1000)
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        stream.time_base = tb
        last = -1
        for t, jpeg in frames:
            pts = max(last + 1, int(round(t * 1000)))
            packet = av.Packet(jpeg)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, pts, pts, tb
            out.mux(packet)
            last = pts
