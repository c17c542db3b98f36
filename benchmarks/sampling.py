"""Speculative sampling against plain sampling, window by window, on real English speech.

    python -m benchmarks.sampling [--manifest M] [--model base] [--temperatures 0.2,0.4,0.6,0.8,1.0]
                                  [--best-of 5] [--repeats 3] [--clips N] [--out FILE]

What a temperature fallback decodes: each English clip's first 30-s window (its encoder output made once),
sampled at each temperature with best_of rows, in three modes side by side in one process after a warm-up,
the modes alternating: plain sampling (the target alone, Gumbel noise), coupled speculative sampling (the
draft adds the same noise; tokens must equal plain's), and rejection sampling (Leviathan et al.; the same
distribution, other tokens). As in a Transcriber, whether speculation pays for a kind of decode is timed
once per process (loop.PassCosts): once it has lost, it drafts no more. Median decode times over
`repeats`; the speedup of each speculative mode is plain's decode time over its own, per committed token
(rejection commits other samples, of other lengths).
Acceptance is the share of proposed draft tokens that stood. Prints a Markdown table; --out writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from asr.audio import N_FRAMES, N_SAMPLES, LogMelWindows
from asr.audio_io import load_audio
from asr.decoding import DecodingOptions, DecodingTask
from asr.draft_factory import make_drafter
from asr.drafting import NoDraft
from asr.figures import pass_costs
from asr.models import load_model
from benchmarks.machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
MODES = ("plain", "coupled", "rejection")


def first_window(model, samples) -> tuple[torch.Tensor, torch.Tensor]:
    mel = LogMelWindows(model.dims.n_mels, padding=N_SAMPLES, device=model.device)
    mel.add(samples)
    window = mel.finish().window(0, N_FRAMES)
    with torch.inference_mode():
        features = model.model.encoder(window.unsqueeze(0).to(model.dtype))
    return window, features


def decode(model, options, window, features, drafter) -> dict:
    # as a Transcriber does: whether speculation pays for this kind of decode is timed once per process
    costs = pass_costs(
        model, drafter.name, (options.strategy, options.n_rows, options.temperature, options.sampling)
    )
    result = DecodingTask(model, options, "en").run(features, window, drafter, costs=costs)
    loop = result.loop
    return {
        "decode": loop.decode_time_s,
        "tokens": sum(len(s.tokens) for s in loop.samples),
        "samples": [s.tokens for s in loop.samples],
        "proposed": loop.n_proposed,
        "accepted": loop.n_accepted,
        "passes": loop.n_target_passes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model", default="base")
    parser.add_argument("--temperatures", default="0.2,0.4,0.6,0.8,1.0")
    parser.add_argument("--best-of", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", type=int, default=None, help="at most this many clips")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    temperatures = [float(t) for t in args.temperatures.split(",")]

    entries = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e["language"] == "en"][: args.clips]
    model = load_model(args.model)
    drafter = make_drafter("self", model)
    plain = NoDraft()
    windows = [(e, *first_window(model, load_audio(args.manifest.parent / e["audio"]))) for e in entries]
    base = DecodingOptions(language="en", best_of=args.best_of, seed=args.seed)

    def options(mode: str, temperature: float) -> DecodingOptions:
        sampling = "rejection" if mode == "rejection" else "coupled"
        return replace(base, temperature=temperature, sampling=sampling)

    _, w, f = windows[0]
    for mode in MODES:  # warm-up
        decode(model, options(mode, temperatures[0]), w, f, plain if mode == "plain" else drafter)

    rows = []
    for temperature in temperatures:
        totals = {mode: {"decode": 0.0, "tokens": 0, "proposed": 0, "accepted": 0} for mode in MODES}
        identical = True
        for entry, window, features in windows:
            runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
            for i in range(args.repeats):
                order = MODES if i % 2 == 0 else MODES[::-1]
                for mode in order:
                    d = plain if mode == "plain" else drafter
                    runs[mode].append(decode(model, options(mode, temperature), window, features, d))
            identical &= all(r["samples"] == runs["plain"][0]["samples"] for r in runs["coupled"])
            for mode in MODES:
                total = totals[mode]
                total["decode"] += statistics.median(r["decode"] for r in runs[mode])
                total["tokens"] += runs[mode][0]["tokens"]
                total["proposed"] += runs[mode][0]["proposed"]
                total["accepted"] += runs[mode][0]["accepted"]
            print(
                f"  T={temperature} {entry['audio']}: "
                + ", ".join(f"{m} {statistics.median(r['decode'] for r in runs[m]):.2f}s" for m in MODES),
                flush=True,
            )
        per_token = {m: totals[m]["decode"] / max(totals[m]["tokens"], 1) for m in MODES}
        row = {"temperature": temperature, "identical": identical}
        for mode in MODES:
            t = totals[mode]
            row[mode] = {
                **t,
                "s_per_token": per_token[mode],
                "acceptance": t["accepted"] / t["proposed"] if t["proposed"] else None,
                "speedup": per_token["plain"] / per_token[mode],
            }
        rows.append(row)

    print(
        f"\n{cpu_name()}, {args.threads} threads, torch {torch.__version__}, target {args.model} "
        f"({str(model.dtype).removeprefix('torch.')}), draft self, best_of {args.best_of}, "
        f"{len(windows)} clips' first windows, median of {args.repeats}\n"
    )
    print(
        "| T | plain s | coupled s | coupled speedup | coupled acceptance | coupled = plain "
        "| rejection s/token ratio | rejection acceptance |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c, j = r["coupled"], r["rejection"]
        print(
            f"| {r['temperature']} | {r['plain']['decode']:.2f} | {c['decode']:.2f} | {c['speedup']:.2f}x "
            f"| {c['acceptance'] or 0:.0%} | {'yes' if r['identical'] else 'NO'} | {j['speedup']:.2f}x "
            f"| {j['acceptance'] or 0:.0%} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
