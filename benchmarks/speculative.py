"""Plain vs speculative decoding on real English speech, side by side in one process.

    python -m benchmarks.speculative [--manifest M] [--model base] [--draft self] [--beam-size B]
                                     [--repeats 3] [--out DIR]

For every English clip of the manifest (default: ../shared/speech/public/manifest.jsonl): after a warm-up,
each mode transcribes the clip `repeats` times (the modes alternate, so drift of the machine hits both);
the median decode-phase and end-to-end times (from samples in memory: file decoding excluded for both) give
the ratios. Tokens must be identical. With --beam-size both modes are beam search (plain and speculative).
Prints a Markdown table; --out also writes results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from asr.audio_io import load_audio
from asr.models import load_model
from asr.transcribe import transcribe
from benchmarks.machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"


def run(model, samples, draft: str, draft_k: int | None, timestamps: bool, beam_size: int | None) -> dict:
    result = transcribe(
        model, samples, draft=draft, draft_k=draft_k, timestamps=timestamps, beam_size=beam_size
    )
    stats = result.stats
    times = stats.time_s
    return {
        "tokens": [s.tokens for s in result.segments],
        "text": result.text,
        "decode": times.decode,
        "end_to_end": times.total - times.load_audio,
        "stats": stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model", default="base")
    parser.add_argument("--draft", default="self")
    parser.add_argument("--draft-k", type=int, default=None)
    parser.add_argument("--no-timestamps", action="store_true")
    parser.add_argument("--beam-size", type=int, default=None, help="beam search (default: greedy)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    entries = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e["language"] == "en"]
    model = load_model(args.model)
    timestamps = not args.no_timestamps
    clips = [(e, load_audio(args.manifest.parent / e["audio"])) for e in entries]
    for _, samples in clips[:2]:  # warm-up: first-call allocations and kernel selection, both modes
        run(model, samples, "none", None, timestamps, args.beam_size)
        run(model, samples, args.draft, args.draft_k, timestamps, args.beam_size)

    rows = []
    for entry, samples in clips:
        measured: dict[str, list[dict]] = {"plain": [], "spec": []}
        for i in range(args.repeats):
            order = [("plain", "none"), ("spec", args.draft)]
            for mode, draft in order if i % 2 == 0 else order[::-1]:
                measured[mode].append(run(model, samples, draft, args.draft_k, timestamps, args.beam_size))
        plain, spec = measured["plain"], measured["spec"]
        stats = spec[0]["stats"]
        row = {
            "clip": entry["audio"],
            "kind": entry["kind"],
            "duration_s": entry["duration_s"],
            "tokens": stats.n_tokens,
            "plain_decode_s": statistics.median(r["decode"] for r in plain),
            "spec_decode_s": statistics.median(r["decode"] for r in spec),
            "plain_e2e_s": statistics.median(r["end_to_end"] for r in plain),
            "spec_e2e_s": statistics.median(r["end_to_end"] for r in spec),
            "acceptance_rate": stats.acceptance_rate,
            # greedy: tokens per target pass; beam search: beam steps per target pass
            "per_pass": stats.beam_steps_per_target_pass if args.beam_size else stats.tokens_per_target_pass,
            "identical": all(r["tokens"] == plain[0]["tokens"] for r in plain + spec),
        }
        row["decode_speedup"] = row["plain_decode_s"] / row["spec_decode_s"]
        row["e2e_speedup"] = row["plain_e2e_s"] / row["spec_e2e_s"]
        rows.append(row)
        print(
            f"{row['clip']}: decode {row['decode_speedup']:.2f}x, end to end {row['e2e_speedup']:.2f}x, "
            f"acceptance {row['acceptance_rate'] or 0:.0%}, identical {row['identical']}",
            flush=True,
        )

    def total(kind: str, key: str) -> float:
        return sum(r[key] for r in rows if r["kind"] == kind)

    summary = {
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "target": f"{args.model} ({str(model.dtype).removeprefix('torch.')}, {model.device})",
        "draft": args.draft,
        "draft_k": args.draft_k or "adaptive",
        "beam_size": args.beam_size,
        "timestamps": timestamps,
        "repeats": args.repeats,
        "all_identical": all(r["identical"] for r in rows),
        "min_e2e_speedup": min(r["e2e_speedup"] for r in rows),
        "min_decode_speedup": min(r["decode_speedup"] for r in rows),
    }
    for kind in ("short", "long"):
        if any(r["kind"] == kind for r in rows):
            summary[f"{kind}_decode_speedup"] = total(kind, "plain_decode_s") / total(kind, "spec_decode_s")
            summary[f"{kind}_e2e_speedup"] = total(kind, "plain_e2e_s") / total(kind, "spec_e2e_s")
    accepted = sum(r["acceptance_rate"] * r["tokens"] for r in rows if r["acceptance_rate"] is not None)
    summary["acceptance_rate_token_weighted"] = accepted / max(sum(r["tokens"] for r in rows), 1)

    print(
        f"\n{summary['machine']}; target {summary['target']}, draft {args.draft}, "
        f"k {summary['draft_k']}, beam size {args.beam_size or '- (greedy)'}, timestamps {timestamps}, "
        f"median of {args.repeats}\n"
    )
    columns = ["clip", "s", "tokens", "plain decode s", "spec decode s", "decode x", "e2e x", "acceptance"]
    print("| " + " | ".join([*columns, "steps/pass" if args.beam_size else "tok/pass", "same"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {Path(r['clip']).name} | {r['duration_s']:.1f} | {r['tokens']} | {r['plain_decode_s']:.2f} | "
            f"{r['spec_decode_s']:.2f} | {r['decode_speedup']:.2f} | {r['e2e_speedup']:.2f} | "
            f"{r['acceptance_rate'] or 0:.0%} | {r['per_pass']:.1f} | "
            f"{'yes' if r['identical'] else 'NO'} |"
        )
    print()
    for key, value in summary.items():
        print(f"- {key}: {value:.2f}" if isinstance(value, float) else f"- {key}: {value}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"summary": summary, "clips": rows}, indent=2))


if __name__ == "__main__":
    main()
