"""A stream's video frames become the segment's video: JPEGs muxed as they are into Matroska, read back by
the visual encoders' frame reader at their times."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import optional

from emostore.extract.video_io import iter_frames
from emostore.sample.clips import _frame, photo
from emostore.serve.stream import write_mjpeg

optional("av", "audio")


def test_frames_become_a_video_read_back_at_their_times(tmp_path):
    from PIL import Image

    img = photo()
    frames = []
    for i in range(8):  # one frame every 0.25 s, each a little more zoomed in
        buf = io.BytesIO()
        Image.fromarray(_frame(img, i)).save(buf, format="JPEG", quality=90)
        frames.append((0.25 * i, buf.getvalue()))
    path = tmp_path / "segment.mkv"
    write_mjpeg(path, frames)
    got = list(iter_frames(path, 4.0))
    assert len(got) == len(frames)
    assert [f.timestamp_ms for f in got] == pytest.approx([1000 * t for t, _ in frames], abs=2)
    for frame, (_, jpeg) in zip(got, frames):
        original = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float32)
        assert frame.image.shape == original.shape
        assert np.abs(frame.image.astype(np.float32) - original).mean() < 3  # the same picture, decoded once more
    diffs = [np.abs(a.image.astype(np.float32) - b.image.astype(np.float32)).mean() for a, b in zip(got, got[1:])]
    assert min(diffs) > 1  # in order: each frame differs from the one before
