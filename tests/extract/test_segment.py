"""The speech segmenter on recordings made from the sample's speech clips, with known silences between them."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from conftest import optional

from emostore.errors import UserError
from emostore.extract.segment import RATE, Segmenter, SegmenterConfig
from emostore.sample.clips import joined_recording, speech_clips

optional("silero_vad", "audio")
sf = optional("soundfile", "audio")


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Eight clips with 1.0 to 2.4 s of silence between them: (samples, true speech spans in seconds)."""
    path = tmp_path_factory.mktemp("rec") / "eight.wav"
    truth = joined_recording(path, speech_clips()[:8], [1.0, 2.4, 1.2, 1.8, 1.0, 2.0, 1.4, 1.0])
    return sf.read(str(path), dtype="float32")[0], truth


def segment(audio: np.ndarray, config: SegmenterConfig | None = None, chunks=(1600,)) -> list:
    """Feed ``audio`` in chunks cycling through the sizes ``chunks``; then flush."""
    seg, out, i, k = Segmenter(config), [], 0, 0
    while i < len(audio):
        out += seg.feed(audio[i:i + chunks[k % len(chunks)]])
        i += chunks[k % len(chunks)]
        k += 1
    return out + seg.flush()


def test_boundaries_within_a_quarter_second_and_independent_of_chunking(recording):
    audio, truth = recording
    segs = segment(audio)
    assert len(segs) == len(truth)
    for s, (t0, t1) in zip(segs, truth):
        assert abs(s.start - t0) <= 0.25 and abs(s.end - t1) <= 0.25, (s.start, s.end, t0, t1)
        np.testing.assert_array_equal(s.audio, audio[s.start_sample:s.end_sample])
        assert s.closed_at >= s.end_sample - int(0.05 * RATE) + int(0.8 * RATE) - 512  # after the closing silence
    assert [s.id for s in segs] == list(range(len(truth)))
    other = segment(audio, chunks=(1, 511, 7000, 333, len(audio)))
    assert [(s.start_sample, s.end_sample, s.closed_at) for s in other] == \
        [(s.start_sample, s.end_sample, s.closed_at) for s in segs]


def test_padding_and_minimum_speech(recording):
    audio, truth = recording
    bare = segment(audio, SegmenterConfig(pad_s=0.0))
    padded = segment(audio, SegmenterConfig(pad_s=0.2))
    assert [(s.start_sample - 3200, s.end_sample + 3200) for s in bare] == \
        [(s.start_sample, s.end_sample) for s in padded]
    # a 0.15 s burst of speech between long silences is shorter than min_speech_s and dropped
    t0 = truth[0][0]
    burst = np.concatenate([np.zeros(2 * RATE, np.float32), audio[int((t0 + 0.5) * RATE):int((t0 + 0.65) * RATE)],
                            np.zeros(2 * RATE, np.float32)])
    assert segment(burst, SegmenterConfig(min_speech_s=0.3)) == []
    with pytest.raises(UserError, match="minimum silence"):
        SegmenterConfig(pad_s=0.5, min_silence_s=0.3).check()


def test_long_speech_is_cut_at_a_quiet_point(tmp_path):
    """Clips 0.4 s apart (shorter than the minimum silence) are one long stretch of speech: with a 6 s maximum
    it is cut into pieces of at most 6 s, each cut where the audio is quiet (a gap, or a pause inside a clip)."""
    path = tmp_path / "run_on.wav"
    truth = joined_recording(path, speech_clips()[:6], [0.3] * 5 + [2.0])
    audio = sf.read(str(path), dtype="float32")[0]
    segs = segment(audio, SegmenterConfig(max_segment_s=6.0))
    assert len(segs) >= 3 and all(s.end - s.start <= 6.0 + 0.05 for s in segs)
    assert segs[0].start <= truth[0][0] and segs[-1].end >= truth[-1][1] - 0.25
    cuts = [(a, b) for a, b in zip(segs, segs[1:]) if a.cut]
    assert len(cuts) >= 2 and not segs[-1].cut
    for a, b in cuts:
        assert a.end_sample == b.start_sample  # contiguous: no speech lost at a cut
        around = audio[a.end_sample - 768:a.end_sample + 768]  # the 96 ms around the cut
        assert np.sqrt(np.mean(around ** 2)) < 0.01, a.end  # under -40 dBFS: no word is cut through


def test_memory_stays_bounded_on_a_long_stream(recording):
    """Two minutes of speech and silence, fed 100 ms at a time: the segmenter keeps one segment's audio at most."""
    audio, truth = recording
    long = np.tile(audio, int(np.ceil(120 * RATE / len(audio))))[:120 * RATE]
    seg = Segmenter()
    tracemalloc.start()
    closed = 0
    for i in range(0, len(long), 1600):
        closed += len(seg.feed(long[i:i + 1600]))  # segments are handed over and dropped
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert closed >= 2 * len(truth)
    assert peak < 2.5e6, f"peak {peak / 1e6:.1f} MB while the stream holds {long.nbytes / 1e6:.1f} MB"
    assert seg.capacity * 4 < 1.2e6


def test_webrtc_detector_finds_the_same_segments(recording):
    optional("webrtcvad", "audio")
    audio, truth = recording
    segs = segment(audio, SegmenterConfig(vad="webrtc"))
    assert len(segs) == len(truth)
    for s, (t0, t1) in zip(segs, truth):
        assert abs(s.start - t0) <= 0.35 and abs(s.end - t1) <= 0.35, (s.start, s.end, t0, t1)
