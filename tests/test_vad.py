"""Voice activity (asr/vad.py): only speech is decoded, and every time maps back to the input's timeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asr.audio_io import load_audio
from asr.decoding import DecodingOptions
from asr.errors import InvalidOptionError
from asr.models import load_model
from asr.results import Segment, Word
from asr.transcribe import TranscribeOptions, transcribe
from asr.vad import Timeline, VadOptions

RATE = 16000


def test_the_timeline_maps_joined_times_back_by_the_region_that_holds_them():
    # speech at 1-3 s and 10-12 s of a 20-s input: joined, 0-2 s and 2-4 s
    timeline = Timeline([(1 * RATE, 3 * RATE), (10 * RATE, 12 * RATE)], 20 * RATE)
    assert timeline.speech_s == 4 and timeline.skipped_s == 16 and timeline.duration_s == 20
    samples = np.arange(20 * RATE, dtype=np.float32)
    joined = timeline.join(samples)
    assert joined.shape == (4 * RATE,) and joined[0] == RATE and joined[2 * RATE] == 10 * RATE
    words = [Word(" a", 0.5, 1.0, 0.9), Word(" b", 1.9, 2.1, 0.8)]
    first = timeline.segment(Segment(0, 0.2, 2.1, " a b", [], words=words))  # mostly in the first region
    assert (first.start, first.end) == (1.2, 3.0)
    assert [(w.start, w.end) for w in first.words or []] == [(1.5, 2.0), (2.9, 3.0)]  # kept inside it
    second = timeline.segment(Segment(1, 1.8, 3.5, " c", []))  # mostly in the second
    assert (second.start, second.end) == (10.0, 11.5) and second.words is None


def test_vad_options_are_checked():
    with pytest.raises(InvalidOptionError, match="--vad-threshold"):
        VadOptions(threshold=1.5)
    with pytest.raises(InvalidOptionError, match="--vad-min-silence-ms"):
        VadOptions(min_silence_ms=-1)


@pytest.mark.slow
def test_a_minute_of_noise_is_skipped_and_the_times_after_it_are_the_inputs(speech_dir):
    pytest.importorskip("silero_vad", reason="silero-vad is not installed")
    model = load_model("base")
    first = load_audio(speech_dir / "audio/jfk/jfk.wav")
    second = load_audio(speech_dir / "audio/librispeech/2412-153948-0000.flac")
    noise = (np.random.default_rng(0).standard_normal(RATE * 60) * 0.1).astype(np.float32)
    samples = np.concatenate([first, noise, second])
    gap = (first.shape[0] / RATE + 0.5, (first.shape[0] + noise.shape[0]) / RATE - 0.5)
    options = TranscribeOptions(vad=VadOptions(), word_timestamps=True)
    threads = torch.get_num_threads()
    result = transcribe(model, samples, DecodingOptions(language="en"), options)
    assert torch.get_num_threads() == threads  # silero_vad's import sets 1 thread: put back
    assert result.stats.audio_skipped_s > 55 and result.stats.time_s.vad > 0
    assert result.duration_s == pytest.approx(samples.shape[0] / RATE)
    words = [w for s in result.segments for w in s.words or []]
    assert not [w for w in words if gap[0] < w.start < gap[1] or gap[0] < w.end < gap[1]]
    assert not [s for s in result.segments if gap[0] < s.start < gap[1]]
    # the second clip's words come after the gap, where its audio is in the input
    after = [w for w in words if w.start >= gap[1]]
    assert after and after[0].start == pytest.approx(gap[1] + 0.5, abs=1.0)
    assert "the reader will excuse me" in result.text.lower()
    starts = [w.start for w in words]
    assert starts == sorted(starts)
