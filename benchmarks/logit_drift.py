"""How far a verification pass's logits drift from a one-token step's, against how close decisions come.

    python -m benchmarks.logit_drift [--manifest M] [--model base] [--threads 2] [--pass-sizes 6 11]

Speculative decoding is exact when the target's choice at every position is the one plain decoding makes.
A verification pass computes k + 1 positions at once; its products and attention are blocked differently
from a one-position step's, so its logits equal the step's only up to floating-point rounding. A token could
flip only where the two best logits are closer than that rounding. For the first 30-s window of every English
clip of the manifest, this decodes greedily one token at a time (the model's raw argmax, no rules; up to 120
tokens), then feeds the same tokens in passes of each size, and reports the largest logit difference, the
argmax flips, and the smallest gaps between the two best logits of the one-token steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from asr.audio import N_FRAMES, N_SAMPLES, log_mel_spectrogram, pad_or_trim
from asr.audio_io import load_audio
from asr.models import load_model
from benchmarks.machine import cpu_name

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MANIFEST = ROOT.parent / "shared" / "speech" / "public" / "manifest.jsonl"
MAX_TOKENS = 120


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--model", default="base")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pass-sizes", type=int, nargs="+", default=[6, 11])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    entries = [json.loads(line) for line in args.manifest.read_text().splitlines() if line.strip()]
    entries = [e for e in entries if e["language"] == "en"]
    model = load_model(args.model)
    decoder = model.model.decoder
    prompt = model.tokenizer.sot_sequence("en", "transcribe")
    largest_drift, n_flips, n_positions = 0.0, 0, 0
    gaps: list[float] = []
    for entry in entries:
        samples = torch.from_numpy(load_audio(args.manifest.parent / entry["audio"])[:N_SAMPLES])
        mel = pad_or_trim(log_mel_spectrogram(samples, model.dims.n_mels), N_FRAMES)
        features = model.model.encoder(mel[None].to(model.device, model.dtype))
        cross = decoder.project_audio(features)
        cache = decoder.new_cache(features, 1, cross=cross)
        logits = decoder(torch.tensor([prompt], device=model.device), cache)[0, -1]
        tokens: list[int] = []
        steps: list[torch.Tensor] = []  # the logits after each token, one-token steps
        while len(tokens) < MAX_TOKENS:
            token = int(logits.argmax())
            if token == model.tokenizer.eot:
                break
            tokens.append(token)
            logits = decoder(torch.tensor([[token]], device=model.device), cache)[0, -1]
            steps.append(logits)
        if not tokens:
            continue
        one_by_one = torch.stack(steps)
        for size in args.pass_sizes:
            cache = decoder.new_cache(features, 1, cross=cross)
            decoder(torch.tensor([prompt], device=model.device), cache)
            passes = [
                decoder(torch.tensor([tokens[i : i + size]], device=model.device), cache)[0]
                for i in range(0, len(tokens), size)
            ]
            together = torch.cat(passes)
            largest_drift = max(largest_drift, (together - one_by_one).abs().max().item())
            n_flips += int((together.argmax(-1) != one_by_one.argmax(-1)).sum())
        top2 = one_by_one.topk(2, dim=-1).values
        gaps += (top2[:, 0] - top2[:, 1]).tolist()
        n_positions += len(tokens)

    gaps.sort()
    print(
        f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; {args.model} "
        f"({str(model.dtype).removeprefix('torch.')}, {model.device}); {len(entries)} clips, "
        f"{n_positions} positions, passes of {', '.join(map(str, args.pass_sizes))} tokens"
    )
    print(f"- largest |logit difference|, pass vs one-token steps: {largest_drift:.2e}")
    print(f"- argmax flips: {n_flips}")
    print(f"- smallest gaps between the two best logits: {', '.join(f'{g:.4f}' for g in gaps[:5])}")
    print(f"- median gap: {statistics.median(gaps):.2f}")
    print(f"- smallest gap / largest difference: {gaps[0] / max(largest_drift, 1e-30):.0f}x")


if __name__ == "__main__":
    main()
