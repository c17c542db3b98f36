"""Our transcripts against openai-whisper's `transcribe()` (the reference) token for token, and WER (#20).

    python -m benchmarks.reference_parity [--manifest M] [--clips SUBSTRING ...] [--json OUT]

For every clip of the manifest (default ../shared/speech/public/manifest.jsonl, every language, each given
its manifest language), with our bundled base weights read into openai-whisper's own model
(tests/reference.py), float32 on the CPU: openai-whisper's `transcribe()` at temperature 0 (a
single value: no fallback) with its other defaults (conditioning on previous text, no_speech_threshold 0.6,
logprob_threshold -1, compression_ratio_threshold 2.4, which at one temperature decides nothing), against

- `ours`: our plain decoding (`draft="none"`), windows cut as openai-whisper cuts them (the default);
- `ours-spec`: the default speculative decoding (`draft="self"`), same windows;
- `ours-padded`: plain decoding with the windows of the padded input (transformers' convention for a short
  clip, ours before issue #20).

Every window's decoded tokens are compared (openai's are taken from its `model.decode` calls). Where a run
differs, the first differing window and position are printed with both models' logits for the two tokens
there, given the same window and prefix: a float race shows as a gap of about 1e-4 with opposite signs.
WER (normalized words; CER for Japanese) is printed per mode over all clips and over the English ones.
Needs `pip install --no-deps openai-whisper` and `numba more-itertools tiktoken` (the test extra's).
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
MODES = ("ours", "ours-spec", "ours-padded")


def error_rate(reference: str, hypothesis: str, language: str) -> tuple[int, int]:
    """(edits, reference length): words, or characters for Japanese."""
    from tests.util import edit_distance, normalize

    if language == "ja":
        ref, hyp = list("".join(reference.split())), list("".join(hypothesis.split()))
    else:
        ref, hyp = normalize(reference), normalize(hypothesis)
    return edit_distance(ref, hyp), len(ref)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--clips", nargs="*", default=None, help="only clips whose path holds one of these")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write every run's tokens here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import whisper

    from asr.audio import LogMelWindows
    from asr.audio_io import load_audio
    from asr.models import load_model
    from asr.transcribe import transcribe_stream
    from tests.reference import (
        detected_languages,
        first_difference,
        measure_gap,
        reference_transcribe,
        to_openai_whisper,
    )

    entries = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    if args.clips:
        entries = [e for e in entries if any(c in e["audio"] for c in args.clips)]
    model = load_model("base")
    reference = to_openai_whisper(model)
    print(
        f"openai-whisper {whisper.__version__}, torch {torch.__version__}, {platform.machine()}, "
        f"{args.threads} threads, base fp32, temperature 0, {len(entries)} clips"
    )
    errors: dict[str, dict[str, list[int]]] = {m: {"all": [0, 0], "en": [0, 0]} for m in (*MODES, "openai")}
    identical = dict.fromkeys(MODES, 0)
    record: dict[str, Any] = {}
    padded_window = functools.partialmethod(LogMelWindows.window, padded_input=True)
    for entry in entries:
        samples = load_audio(args.manifest.parent / entry["audio"])
        language = entry["language"]
        theirs = reference_transcribe(reference, samples, language)
        texts = {"openai": theirs.text}
        lines = []
        for mode in MODES:
            draft = "self" if mode == "ours-spec" else "none"
            original = LogMelWindows.window
            if mode == "ours-padded":
                LogMelWindows.window = padded_window  # type: ignore[method-assign]
            try:
                segments, info = transcribe_stream(model, samples, language=language, draft=draft)
                texts[mode] = "".join(s.text for s in segments).strip()
            finally:
                LogMelWindows.window = original  # type: ignore[method-assign]
            difference = first_difference(info.window_tokens, theirs.window_tokens)
            if difference is None:
                identical[mode] += 1
                lines.append(f"  {mode}: identical, {len(theirs.window_tokens)} window(s)")
            else:
                lines.append(
                    f"  {mode}: {measure_gap(model, reference, theirs, difference, language).describe()}"
                )
            record[f"{entry['audio']}|{mode}"] = info.window_tokens
        record[f"{entry['audio']}|openai"] = theirs.window_tokens
        for mode, text in texts.items():
            edits, n = error_rate(entry["text"], text, language)
            for group in ("all", "en") if language == "en" else ("all",):
                errors[mode][group][0] += edits
                errors[mode][group][1] += n
        ours_language, p_ours, their_language, p_theirs = detected_languages(model, reference, samples)
        lines.append(
            f"  language detected: ours {ours_language} ({p_ours:.4f}), "
            f"openai {their_language} ({p_theirs:.4f})"
        )
        print(entry["audio"], *lines, sep="\n", flush=True)
    print(f"\ntoken-identical to openai-whisper's transcribe, of {len(entries)} clips:")
    for mode in MODES:
        print(f"  {mode}: {identical[mode]}")
    print("error rate (WER; CER for Japanese), all clips / English clips:")
    for mode, groups in errors.items():
        rates = [f"{100 * e / max(n, 1):.2f}% ({e}/{n})" for e, n in groups.values()]
        print(f"  {mode}: {' / '.join(rates)}")
    if args.json:
        args.json.write_text(json.dumps(record))


if __name__ == "__main__":
    main()
