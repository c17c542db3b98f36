"""Voice activity: only speech is decoded (`TranscribeOptions.vad`), every time mapped back to the input's.

Speech regions come from Silero VAD (the `silero-vad` package ships its model: nothing is downloaded; its
TorchScript form, which needs only torch). The regions, padded and merged where the silence between them
is shorter than `min_silence_ms`, are put end to end and transcribed as one recording; `Timeline` maps a
time in that recording back to the input's timeline (segments and words).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .errors import InvalidOptionError
from .results import Segment, Word


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5  # speech probability above which a 32-ms frame is speech
    min_silence_ms: int = 2000  # a pause shorter than this does not split speech
    speech_pad_ms: int = 400  # kept on each side of every speech region
    min_speech_ms: int = 250  # speech shorter than this is dropped

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise InvalidOptionError(f"--vad-threshold must be between 0 and 1, got {self.threshold}")
        for name in ("min_silence_ms", "speech_pad_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise InvalidOptionError(
                    f"--vad-{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}"
                )


@cache
def _silero() -> tuple[Any, Any]:
    """Silero VAD's model and its `get_speech_timestamps`."""
    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        return load_silero_vad(), get_speech_timestamps
    except ImportError as exc:
        raise InvalidOptionError("--vad needs the silero-vad package: pip install silero-vad") from exc
    finally:
        # importing silero_vad sets torch to 1 thread (silero_vad/model.py), for the whole process: every
        # transcription after it ran on one core
        torch.set_num_threads(threads)


def speech_regions(samples: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """The speech in `samples` (16 kHz) as (start, end) sample indices, padded, sorted, not overlapping."""
    model, get_speech_timestamps = _silero()
    if samples.shape[0] == 0:
        return []
    with torch.inference_mode():
        found = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
            model,
            threshold=options.threshold,
            sampling_rate=SAMPLE_RATE,
            min_speech_duration_ms=options.min_speech_ms,
            min_silence_duration_ms=options.min_silence_ms,
            speech_pad_ms=options.speech_pad_ms,
        )
    regions: list[tuple[int, int]] = []
    for region in found:
        start, end = int(region["start"]), min(int(region["end"]), samples.shape[0])
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], max(regions[-1][1], end))
        elif end > start:
            regions.append((start, end))
    return regions


class Timeline:
    """The speech regions put end to end; `segment()` maps a segment of that recording to the input's."""

    def __init__(self, regions: list[tuple[int, int]], n_samples: int, pad_s: float = 0.0) -> None:
        self.regions = regions
        self.pad_s = pad_s  # each region's padding: not speech
        self.duration_s = n_samples / SAMPLE_RATE
        self._starts: list[float] = []  # each region's start in the joined recording (seconds)
        position = 0
        for start, end in regions:
            self._starts.append(position / SAMPLE_RATE)
            position += end - start
        self.speech_s = position / SAMPLE_RATE

    @property
    def skipped_s(self) -> float:
        return self.duration_s - self.speech_s

    def join(self, samples: np.ndarray) -> np.ndarray:
        if not self.regions:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([samples[start:end] for start, end in self.regions]).astype(
            np.float32, copy=False
        )

    def _joined_end(self, index: int) -> float:
        start, stop = self.regions[index]
        return self._starts[index] + (stop - start) / SAMPLE_RATE

    def _region_of(self, t0: float, t1: float) -> int:
        """The region holding most of the span [t0, t1] of the joined recording (its start's, if empty)."""
        best, best_overlap = max(0, bisect.bisect_right(self._starts, t0) - 1), 0.0
        for index, begin in enumerate(self._starts):
            overlap = min(t1, self._joined_end(index)) - max(t0, begin)
            if overlap > best_overlap:
                best, best_overlap = index, overlap
        return best

    def segment(self, segment: Segment) -> Segment:
        """`segment` with its times and its words' on the input's timeline: all moved by the offset of the
        region that holds most of the segment, and kept inside it (a word the alignment put in the
        padding before a join stays with its segment, not at the end of the speech before)."""
        if not self.regions:
            return segment
        index = self._region_of(segment.start, segment.end)
        begin, stop = (t / SAMPLE_RATE for t in self.regions[index])
        offset = begin - self._starts[index]

        def moved(t: float) -> float:
            return round(min(max(t + offset, begin), stop), 3)

        start, end = moved(segment.start), moved(segment.end)
        words = None
        if segment.words is not None:
            words = [Word(w.word, moved(w.start), moved(w.end), w.probability) for w in segment.words]
        return replace(segment, start=start, end=max(start, end), words=words)
