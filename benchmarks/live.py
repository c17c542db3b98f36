"""Live captions (`asr stream`) on the public clips: keeping up, commit latency, WER against offline, passes.

    python -m benchmarks.live [--manifest M] [--model base] [--min-duration 20] [--speed 1]
                              [--update-s 1.0] [--threads N] [--out FILE]

For every public clip at least `min_duration` long (the long-form ones and the two ~26-s MFA clips), in one
process after a warm-up:
- offline: `transcribe()` with the same model, greedy with the self draft, at temperature 0 as live
  decodes (the reference the live text is compared with), and with the default temperature fallback;
- live: a `LiveStream` with the hypothesis drafter (previous hypothesis, then the self draft) replayed at
  `speed` times real time (1: real time, sleeping between 0.1-s chunks; latency measured on the replay
  clock; 0: as fast as the CPU goes, on the stream's simulated real-time clock);
- plain: a `LiveStream` with no draft at all (`--draft none --no-hypothesis-draft`), on the simulated
  clock (its target passes do not depend on the clock; only its keeping up would).
Per clip: updates, mean and max update time, lagging updates, commit latency mean and p95, target passes of
live and of plain (and their ratio), tokens accepted from the hypothesis and from the draft, and the WER of
live, plain and offline against the manifest's reference. Prints a Markdown table; --out writes JSON with
the machine (CPU model name and flags), threads and dtype.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.audio_io import load_audio
from asr.decoding import DecodingOptions
from asr.live import LiveOptions, LiveStream, replay, replay_clock
from asr.models import load_model
from asr.transcribe import TranscribeOptions, transcribe
from benchmarks.machine import machine, write_report
from tests.util import wer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"


def clips(manifest: Path, min_duration: float) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["duration_s"] >= min_duration]


def run_live(
    model, samples: np.ndarray, language: str, draft: str, hypothesis: bool, speed: float, update_s: float
):
    stream = LiveStream(
        model,
        DecodingOptions(language=language, draft=draft),
        LiveOptions(update_s=update_s, hypothesis_draft=hypothesis),
        clock=replay_clock(speed),
    )
    for _ in replay(stream, samples, speed=speed):
        pass
    return stream


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model", default="base")
    parser.add_argument("--min-duration", type=float, default=20.0)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--update-s", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rows = clips(args.manifest, args.min_duration)
    if not rows:
        parser.error(f"no clip of at least {args.min_duration:g} s in {args.manifest}")
    base = args.manifest.parent
    # warm-up: the kernels, the draft's packing, the first-call costs
    warm = load_audio(base / rows[0]["audio"])[: 16000 * 4]
    run_live(model, warm, rows[0]["language"], "self", True, 0.0, args.update_s)

    results = []
    for row in rows:
        samples = load_audio(base / row["audio"])
        language = row["language"]
        options = DecodingOptions(language=language)
        offline = transcribe(model, samples, options, TranscribeOptions(temperature=(0.0,)))
        offline_fallback = transcribe(model, samples, options, TranscribeOptions())
        live = run_live(model, samples, language, "self", True, args.speed, args.update_s)
        plain = run_live(model, samples, language, "none", False, 0.0, args.update_s)
        s, p = live.stats.to_dict(), plain.stats.to_dict()
        result = {
            "clip": row["audio"],
            "language": language,
            "duration_s": row["duration_s"],
            "live": s,
            "plain": p,
            "passes_ratio": round(s["target_passes"] / max(p["target_passes"], 1), 3),
            "wer_live": round(wer(row["text"], live.text), 4),
            "wer_plain_live": round(wer(row["text"], plain.text), 4),
            "wer_offline": round(wer(row["text"], offline.text), 4),
            "wer_offline_fallback": round(wer(row["text"], offline_fallback.text), 4),
        }
        results.append(result)
        print(json.dumps(result), flush=True)

    report = {
        "machine": {**machine(), "platform": platform.platform()},
        "threads": torch.get_num_threads(),
        "model": args.model,
        "dtype": str(model.dtype).replace("torch.", ""),
        "speed": args.speed,
        "update_s": args.update_s,
        "clips": results,
    }
    print(
        f"\n{report['machine']['cpu']} ({', '.join(report['machine']['flags'])}), "
        f"{report['threads']} threads, {args.model} {report['dtype']}, replay speed {args.speed:g}\n"
    )
    print(
        "| clip | s | updates | update mean / max s | lagging | latency mean / p95 s | passes live / plain "
        "| from hyp / draft | WER live / offline (fallback) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        s, p = r["live"], r["plain"]
        print(
            f"| {Path(r['clip']).stem} | {r['duration_s']:.0f} | {s['updates']} | "
            f"{s['update_time_mean_s']:.2f} / {s['update_time_max_s']:.2f} | {s['lagging_updates']} | "
            f"{s['latency_mean_s']:.2f} / {s['latency_p95_s']:.2f} | {s['target_passes']} / "
            f"{p['target_passes']} ({r['passes_ratio']:.0%}) | {s['accepted_from_hypothesis']} / "
            f"{s['accepted_from_draft']} | {r['wer_live']:.1%} / {r['wer_offline']:.1%} "
            f"({r['wer_offline_fallback']:.1%}) |"
        )
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
