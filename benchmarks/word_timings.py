"""Word timestamps: agreement with openai-whisper's own alignment on the same weights, and their cost.

    python -m benchmarks.word_timings [--manifest M] [--model base] [--repeats 3] [--out FILE]

For every public clip (its first 30-s window), in one process after a warm-up:
- agreement: our words (asr.timing.find_alignment) against openai-whisper's `timing.find_alignment` run on
  the same weights (tests/reference.py maps them) with the same text tokens and mel window: the words'
  text must be equal; reported are the differences of starts and ends (median, 95th percentile, max);
- cost: `transcribe()` (greedy with the self draft, the defaults otherwise) of the whole clip with and
  without `word_timestamps`, alternated, `repeats` times; the median times, summed over the clips, and the
  word-timings stage's own share (`stats.time_s.words`).
Needs the openai-whisper package (`pip install --no-deps openai-whisper` with the test extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from asr.audio import N_SAMPLES
from asr.audio_io import load_audio
from asr.decoding import DecodingOptions
from asr.models import load_model
from asr.timing import ALIGNMENT_HEADS, find_alignment
from asr.transcribe import TranscribeOptions, transcribe
from benchmarks.machine import machine, write_report
from benchmarks.sampling import first_window

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"


def reference_words(reference, tokenizer, tokens, mel_window, n_frames):
    import whisper.timing

    return whisper.timing.find_alignment(reference, tokenizer, tokens, mel_window, n_frames)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model", default="base")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    import whisper
    import whisper.tokenizer

    from tests.reference import to_openai_whisper

    model = load_model(args.model)
    reference = to_openai_whisper(model)
    reference.set_alignment_heads(whisper._ALIGNMENT_HEADS[args.model])
    assert args.model in ALIGNMENT_HEADS
    rows = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    base = args.manifest.parent
    differences: list[float] = []
    n_words = mismatched = 0
    with_words: list[float] = []
    without: list[float] = []
    words_stage: list[float] = []
    first = load_audio(base / rows[0]["audio"])
    transcribe(
        model, first, DecodingOptions(language=rows[0]["language"]), TranscribeOptions(word_timestamps=True)
    )
    for row in rows:
        if not model.tokenizer.multilingual and row["language"] != "en":
            continue
        samples = load_audio(base / row["audio"])
        language = row["language"]
        options = DecodingOptions(language=language)
        # agreement, on the first window
        window_samples = samples[:N_SAMPLES]
        mel_window, features = first_window(model, window_samples)
        result = transcribe(model, window_samples, options, TranscribeOptions(temperature=0.0))
        tokens = [t for s in result.segments for t in s.tokens if t < model.tokenizer.eot]
        n_frames = window_samples.shape[0] // 160
        ours = find_alignment(model, features, tokens, n_frames, language)
        tokenizer = whisper.tokenizer.get_tokenizer(
            model.tokenizer.multilingual,
            num_languages=reference.num_languages,
            language=language,
            task="transcribe",
        )
        theirs = reference_words(reference, tokenizer, tokens, mel_window, n_frames)
        if [w.word for w in ours] != [w.word for w in theirs]:
            mismatched += 1
        else:
            n_words += len(ours)
            for a, b in zip(ours, theirs, strict=True):
                differences += [abs(a.start - b.start), abs(a.end - b.end)]
        # cost, on the whole clip
        times = {True: [], False: []}
        stage = []
        for _ in range(args.repeats):
            for words in (False, True):
                started = time.perf_counter()
                out = transcribe(model, samples, options, TranscribeOptions(word_timestamps=words))
                times[words].append(time.perf_counter() - started)
                if words:
                    stage.append(out.stats.time_s.words)
        with_words.append(statistics.median(times[True]))
        without.append(statistics.median(times[False]))
        words_stage.append(statistics.median(stage))
        worst = max((abs(a.start - b.start) for a, b in zip(ours, theirs, strict=False)), default=0.0)
        print(
            f"{Path(row['audio']).stem}: {len(ours)} words, max start difference {worst * 1000:.0f} ms; "
            f"{without[-1]:.2f} s -> {with_words[-1]:.2f} s (words stage {words_stage[-1]:.3f} s)",
            flush=True,
        )
    diffs_ms = np.array(differences) * 1000
    report = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "clips": len(with_words),
        "clips_with_other_words": mismatched,
        "words_compared": n_words,
        "difference_ms": {
            "median": float(np.median(diffs_ms)) if diffs_ms.size else None,
            "p95": float(np.percentile(diffs_ms, 95)) if diffs_ms.size else None,
            "max": float(diffs_ms.max()) if diffs_ms.size else None,
            "within_40ms": float(np.mean(diffs_ms <= 40.0 + 1e-6)) if diffs_ms.size else None,
        },
        "time_s": {"without": sum(without), "with": sum(with_words), "words_stage": sum(words_stage)},
    }
    cost = report["time_s"]
    print(json.dumps(report, indent=2))
    print(
        f"\nword timings add {cost['with'] / cost['without'] - 1:.1%} to {len(with_words)} transcriptions "
        f"({cost['without']:.2f} -> {cost['with']:.2f} s); "
        f"their stage is {cost['words_stage'] / cost['with']:.1%}"
    )
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
