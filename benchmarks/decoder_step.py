"""Per-step cost of our decoder vs transformers' Whisper modules, side by side in one process.

    python -m benchmarks.decoder_step [--models tiny.en base] [--threads 2] [--repeats 40]

For each model: the median time of one decoder forward over n_new tokens (the greedy step is n_new = 1; a
speculative verification pass is n_new = k + 1), the encoder per 30-s window, and the per-step Python and
dispatch overhead (the same step on a model so small that its arithmetic is negligible). After warm-up;
same weights, same thread count for both engines. Ratios are the headline; absolute times are notes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from asr.model import ModelDims, Whisper
from asr.models import load_model
from benchmarks.machine import cpu_name

N_NEW = (1, 2, 4, 6, 8)
PROMPT = 4  # cached positions before the timed step (the SOT sequence)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def ours_step(model: Whisper, n_new: int, repeats: int) -> float:
    decoder = model.decoder
    features = torch.randn(1, model.dims.n_audio_ctx, model.dims.n_audio_state)
    cache = decoder.new_cache(features, 1)
    decoder(torch.zeros(1, PROMPT, dtype=torch.long), cache)
    tokens = torch.full((1, n_new), 40)

    def step() -> None:
        cache.crop(PROMPT)
        decoder(tokens, cache)

    return median_ms(step, repeats)


def transformers_step(hf, dims: ModelDims, n_new: int, repeats: int) -> float:
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    features = torch.randn(1, dims.n_audio_ctx, dims.n_audio_state)
    decoder = hf.model.decoder
    tokens = torch.full((1, n_new), 40)

    def prefilled():
        cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        out = decoder(
            input_ids=torch.zeros(1, PROMPT, dtype=torch.long),
            encoder_hidden_states=features,
            past_key_values=cache,
            use_cache=True,
        )
        return out.past_key_values

    caches = [prefilled() for _ in range(repeats + 5)]

    def step() -> None:
        out = decoder(
            input_ids=tokens, encoder_hidden_states=features, past_key_values=caches.pop(), use_cache=True
        )
        hf.proj_out(out.last_hidden_state)

    return median_ms(step, repeats)


def overhead_step(repeats: int) -> float:
    """The step of a model with d=8 and 64 tokens: what remains is Python and op-dispatch overhead."""
    dims = ModelDims(80, 1500, 8, 1, 6, 64, 448, 8, 1, 6)
    model = Whisper(dims).eval().requires_grad_(False)
    model.prepare_for_inference()
    return ours_step(model, 1, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--no-transformers", action="store_true", help="skip the transformers side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, fp32, CPU")
    hf_available = not args.no_transformers
    try:
        from tests.util import to_transformers
    except ImportError:
        hf_available = False
    with torch.inference_mode():
        overhead = overhead_step(200)
        print(f"\nper-step Python + dispatch overhead (6-layer decoder, tiny dims): {overhead:.2f} ms")
        print("\n| model | n_new | ours (ms) | transformers (ms) | ratio |")
        print("|---|---|---|---|---|")
        for name in args.models:
            loaded = load_model(name)
            hf = to_transformers(loaded) if hf_available else None
            for n_new in N_NEW:
                ours = ours_step(loaded.model, n_new, args.repeats)
                theirs = transformers_step(hf, loaded.dims, n_new, args.repeats) if hf is not None else None
                ratio = f"{theirs / ours:.2f}x" if theirs else "-"
                print(f"| {name} | {n_new} | {ours:.1f} | {f'{theirs:.1f}' if theirs else '-'} | {ratio} |")
            mel = torch.randn(1, loaded.dims.n_mels, 3000)
            enc = median_ms(lambda: loaded.model.encoder(mel), 5, warmup=1)  # noqa: B023
            enc_hf = median_ms(lambda: hf.model.encoder(mel), 5, warmup=1) if hf is not None else None  # noqa: B023
            print(
                f"| {name} | encoder, 30 s | {enc:.0f} | {f'{enc_hf:.0f}' if enc_hf else '-'} | "
                f"{f'{enc_hf / enc:.2f}x' if enc_hf else '-'} |"
            )


if __name__ == "__main__":
    main()
