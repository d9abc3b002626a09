"""Media for the built-in sample, made offline: short video clips for the utterances that have
speech (``media.csv``), whose picture is a photo that ships with matplotlib (Grace Hopper),
slowly zoomed so that frames differ, and whose sound is the utterance's synthesised speech."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
FPS = 10
SIZE = 320


def photo() -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data, as RGB uint8."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.asarray(Image.open(fh).convert("RGB"))


def _frame(img: np.ndarray, t: float) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    zoom = 1.0 + 0.08 * t  # a slow push-in
    ch, cw = int(h / zoom), int(w / zoom)
    top, left = (h - ch) // 3, (w - cw) // 2
    crop = Image.fromarray(img[top:top + ch, left:left + cw])
    return np.asarray(crop.resize((SIZE, SIZE)))


def write_clip(audio_path: Path, out: Path, img: np.ndarray) -> Path:
    """An mp4 (MPEG-4 video + AAC audio) as long as the speech in ``audio_path``."""
    import av
    import soundfile as sf

    samples, rate = sf.read(str(audio_path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    seconds = len(mono) / rate
    with av.open(str(out), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width = video.height = SIZE
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(max(1, int(np.ceil(seconds * FPS)))):
            frame = av.VideoFrame.from_ndarray(_frame(img, i / FPS / max(seconds, 1e-3)), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        step = 1024
        for start in range(0, len(mono), step):
            block = mono[start:start + step]
            frame = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in audio.encode(frame):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return out


def build_sample_media(directory: Path) -> dict[str, str]:
    """Write one clip per utterance listed in ``media.csv``; returns ``{utterance id: clip path}``."""
    directory.mkdir(parents=True, exist_ok=True)
    img = photo()
    out: dict[str, str] = {}
    with open(HERE / "media.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            clip = directory / f"{row['id']}.mp4"
            if not clip.exists():
                write_clip(HERE / row["media"], clip, img)
            out[row["id"]] = str(clip.resolve())
    return out


#: A sample is speech when louder than this (-40 dBFS): the synthesised clips are silent around their words.
SPEECH_LEVEL = 0.01


def speech_clips() -> list[Path]:
    """The sample's speech files, in ``media.csv`` order."""
    with open(HERE / "media.csv", newline="", encoding="utf-8") as fh:
        return [HERE / row["media"] for row in csv.DictReader(fh)]


def joined_recording(out: Path, clips: list[Path], gaps: list[float], rate: int = 16000,
                     lead: float = 1.0) -> list[tuple[float, float]]:
    """Write ``clips`` one after another as a 16-bit mono WAV: ``lead`` seconds of silence, then each clip
    followed by ``gaps[i]`` seconds of silence. Returns where each clip's speech lies in it (its first
    and last sample louder than -40 dBFS), in seconds: the true segment boundaries."""
    import soundfile as sf
    import soxr

    parts = [np.zeros(int(lead * rate), np.float32)]
    truth, pos = [], len(parts[0])
    for clip, gap in zip(clips, gaps, strict=True):
        x, sr = sf.read(str(clip), dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if sr != rate:
            x = soxr.resample(x, sr, rate).astype(np.float32)
        loud = np.flatnonzero(np.abs(x) > SPEECH_LEVEL)
        truth.append(((pos + loud[0]) / rate, (pos + loud[-1] + 1) / rate))
        parts += [x, np.zeros(int(gap * rate), np.float32)]
        pos += len(x) + int(gap * rate)
    sf.write(str(out), np.concatenate(parts), rate, subtype="PCM_16")
    return truth
