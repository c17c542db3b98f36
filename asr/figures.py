"""A run's figures, typed: what ran, what the draft proposed and the target accepted, every target pass, the
time per stage, and the speedup, always labelled with how it was obtained.

RunStats is filled window by window (add_window) and completed once the last window is done (finish);
`to_dict()` is its JSON form, used only at the edge (the JSON writer). The CLI, the app and the benchmarks
read attributes.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

from .loop import LoopResult, PassCosts, PassRecord
from .models import LoadedModel


@dataclass
class StageTimes:
    """Seconds per stage of one run. `decode` (the token loop) holds `draft` and `target`."""

    load_audio: float = 0.0
    mel: float = 0.0
    encoder: float = 0.0
    cross_kv: float = 0.0
    draft: float = 0.0
    target: float = 0.0
    decode: float = 0.0
    total: float = 0.0


# The same work with or without a draft: --compare counts each at the faster of its two timings.
SHARED_STAGES = ("mel", "encoder", "cross_kv")


@dataclass
class PlainFigures:
    """The plain target's run of the same input (--compare)."""

    target_passes: int
    tokens_per_s: float
    time_s: StageTimes


@dataclass
class RunStats:
    target: str
    draft: str  # the draft's name; "none" without one
    draft_step: str | None  # "native", "pytorch", or None without a draft
    draft_k: int | str  # fixed k, or "adaptive"
    beam_size: int | None
    device: str
    dtype: str
    n_windows: int = 0
    n_silent_windows: int = 0
    n_tokens: int = 0
    proposed: int = 0
    accepted: int = 0
    accepted_length_histogram: Counter[int] = field(default_factory=Counter)
    target_passes: int = 0
    beam_steps: int = 0
    draft_passes: int = 0
    fallback_windows: int = 0
    time_s: StageTimes = field(default_factory=StageTimes)
    passes: list[PassRecord] = field(default_factory=list)  # every target pass of every window, in order
    # derived by finish()
    acceptance_rate: float | None = None
    tokens_per_target_pass: float = 0.0
    beam_steps_per_target_pass: float | None = None
    tokens_per_s: float = 0.0
    realtime_factor: float = 0.0
    speedup: float | None = None
    speedup_kind: str | None = None  # "measured", "estimated" or "baseline"
    speedup_basis: str = ""
    speedup_end_to_end: float | None = None
    identical_to_target: bool | None = None
    plain: PlainFigures | None = None

    @property
    def has_draft(self) -> bool:
        return self.draft_step is not None

    def add_window(self, loop: LoopResult, n_tokens: int) -> None:
        """One decoded window's loop figures."""
        self.n_windows += 1
        self.n_tokens += n_tokens
        self.target_passes += loop.n_target_passes
        self.beam_steps += loop.n_beam_steps
        self.draft_passes += loop.n_draft_passes
        self.proposed += loop.n_proposed
        self.accepted += loop.n_accepted
        self.fallback_windows += int(loop.fell_back)
        self.accepted_length_histogram.update(loop.accepted_lengths)
        self.passes.extend(loop.passes)
        self.time_s.decode += loop.decode_time_s
        self.time_s.cross_kv += loop.cross_kv_time_s
        self.time_s.draft += loop.draft_time_s
        self.time_s.target += loop.target_time_s

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: every field; the histogram keyed by accepted length (as text, in order); each
        pass as [committed, accepted] (tokens, or beam steps)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "accepted_length_histogram":
                value = {str(n): count for n, count in sorted(value.items())}
            elif f.name == "passes":
                value = [[p.n_committed, p.n_accepted] for p in value]
            elif f.name in ("time_s", "plain") and value is not None:
                value = asdict(value)
            out[f.name] = value
        return out


def finish(
    stats: RunStats,
    model: LoadedModel,
    duration_s: float,
    t_start: float,
    plain: RunStats | None = None,
    identical: bool | None = None,
) -> None:
    """Derived figures, once the last window is done. The speedup is always labelled: "measured" against
    `plain`, the plain target's run of the same input (--compare; `identical`: whether every token was the
    same), else "estimated" from this machine's single-token target pass time, or "baseline" without a
    draft."""
    times = stats.time_s
    times.total = time.perf_counter() - t_start
    decode = times.decode
    stats.acceptance_rate = stats.accepted / stats.proposed if stats.proposed else None
    stats.tokens_per_target_pass = stats.n_tokens / max(stats.target_passes, 1)
    if stats.beam_size is not None:
        stats.beam_steps_per_target_pass = stats.beam_steps / max(stats.target_passes, 1)
    stats.tokens_per_s = stats.n_tokens / decode if decode > 0 else 0.0
    stats.realtime_factor = times.total / duration_s if duration_s > 0 else 0.0
    if plain is not None:
        stats.speedup = plain.time_s.decode / decode if decode > 0 else None
        # End to end from samples in memory (the audio was loaded once, for both runs). The log-mel, the
        # encoder and the cross-attention projection are the same work in both runs: each counts at the
        # faster of its two timings, or the one-off set-up of a cold process's first calls (paid by the
        # plain run, which goes first) inflates the ratio.
        plain_total = plain.time_s.total - plain.time_s.load_audio
        spec_total = times.total - times.load_audio
        for stage in SHARED_STAGES:
            plain_s, spec_s = getattr(plain.time_s, stage), getattr(times, stage)
            fastest = min(plain_s, spec_s)
            plain_total += fastest - plain_s
            spec_total += fastest - spec_s
        stats.speedup_end_to_end = plain_total / spec_total
        stats.speedup_kind = "measured"
        stats.speedup_basis = "decode phase, plain target / speculative, same input, same process"
        stats.identical_to_target = identical
        stats.plain = PlainFigures(plain.target_passes, plain.tokens_per_s, plain.time_s)
    elif not stats.has_draft:
        stats.speedup = 1.0
        stats.speedup_kind = "baseline"
        stats.speedup_basis = "plain target decoding"
        stats.identical_to_target = True
    else:
        beam_size = stats.beam_size
        step_s = single_pass_time(model, n_rows=beam_size or 1)
        # plain beam search makes one pass of B rows per step; greedy one pass per token, and one per EOT
        plain_passes = stats.beam_steps if beam_size else stats.n_tokens + stats.n_windows
        stats.speedup = plain_passes * step_s / decode if decode > 0 else None
        stats.speedup_kind = "estimated"
        stats.speedup_basis = (
            f"decode phase; plain estimated as {plain_passes} target passes x {step_s * 1000:.1f} ms "
            f"(one-token pass of {beam_size or 1} row(s) measured on this machine); use --compare to measure"
        )
        stats.identical_to_target = None


_PASS_COSTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, int], PassCosts]]
_PASS_COSTS = weakref.WeakKeyDictionary()


def pass_costs(model: LoadedModel, draft: str, beam_size: int) -> PassCosts:
    """Beam search: whether speculation pays with this draft is timed once per process and remembered
    (loop.PassCosts), so a batch of short files pays for the measurement once, not per file."""
    return _PASS_COSTS.setdefault(model.model, {}).setdefault((draft, beam_size), PassCosts())


_PASS_TIMES: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, float]] = weakref.WeakKeyDictionary()


def single_pass_time(model: LoadedModel, n_rows: int = 1) -> float:
    """Median seconds of one single-token target pass of `n_rows` rows on this machine (measured once)."""
    known = _PASS_TIMES.setdefault(model.model, {})
    if n_rows not in known:
        decoder = model.model.decoder
        dims = model.dims
        with torch.inference_mode():
            features = torch.zeros(
                1, dims.n_audio_ctx, dims.n_audio_state, dtype=model.dtype, device=model.device
            )
            cache = decoder.new_cache(features, n_batch=n_rows)
            prompt = torch.tensor([[model.tokenizer.sot] * 4] * n_rows, device=model.device)
            decoder(prompt, cache)
            token = torch.tensor([[model.tokenizer.sot]] * n_rows, device=model.device)
            times = []
            for _ in range(7):
                cache.crop(4)
                start = time.perf_counter()
                decoder(token, cache)
                times.append(time.perf_counter() - start)
        known[n_rows] = sorted(times[2:])[2]  # the median of 5, after 2 warm-up passes
    return known[n_rows]
