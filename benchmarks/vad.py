"""--vad on a recording with a minute of noise in the middle: time with and without, and what is skipped.

    python -m benchmarks.vad [--model base] [--repeats 3] [--noise 0.1] [--out FILE]

The input: jfk.wav, 60 s of Gaussian noise (standard deviation `noise`), then a LibriSpeech clip, from
the public speech set. In one process after a warm-up, `transcribe()` (greedy with the self draft, the
default fallback schedule) with and without the VAD, alternated `repeats` times; median times, the VAD's own
time, the audio it skipped, the windows decoded, and whether any text lies inside the minute.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from asr.audio_io import load_audio
from asr.decoding import DecodingOptions
from asr.models import load_model
from asr.transcribe import TranscribeOptions, transcribe
from asr.vad import VadOptions
from benchmarks.machine import machine, write_report

SPEECH = Path(__file__).resolve().parent.parent.parent / "shared" / "speech" / "public"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    model = load_model(args.model)
    first = load_audio(SPEECH / "audio/jfk/jfk.wav")
    second = load_audio(SPEECH / "audio/librispeech/2412-153948-0000.flac")
    noise = (np.random.default_rng(0).standard_normal(16000 * 60) * args.noise).astype(np.float32)
    samples = np.concatenate([first, noise, second])
    gap = (first.shape[0] / 16000 + 0.5, (first.shape[0] + noise.shape[0]) / 16000 - 0.5)
    options = DecodingOptions(language="en")
    settings = {False: TranscribeOptions(), True: TranscribeOptions(vad=VadOptions())}
    transcribe(model, samples, options, settings[True])  # warm-up (the VAD model's load included)
    times: dict[bool, list[float]] = {False: [], True: []}
    results = {}
    for _ in range(args.repeats):
        for vad in (False, True):
            started = time.perf_counter()
            results[vad] = transcribe(model, samples, options, settings[vad])
            times[vad].append(time.perf_counter() - started)
    report = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "duration_s": samples.shape[0] / 16000,
        "time_s": {"without": statistics.median(times[False]), "with": statistics.median(times[True])},
        "vad_s": results[True].stats.time_s.vad,
        "skipped_s": results[True].stats.audio_skipped_s,
        "windows": {"without": results[False].stats.n_windows, "with": results[True].stats.n_windows},
        "segments_in_gap": {
            name: sum(gap[0] < s.start < gap[1] or gap[0] < s.end < gap[1] for s in results[flag].segments)
            for name, flag in (("without", False), ("with", True))
        },
    }
    print(json.dumps(report, indent=2))
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
