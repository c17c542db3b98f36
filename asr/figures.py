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
from collections.abc import Hashable
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
    words: float = 0.0  # word timings: one teacher-forced pass and the alignment per window
    vad: float = 0.0  # finding the speech (with a VAD)
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
class TemperatureFigures:
    """The decodes at one temperature: how often, what the draft proposed and the target accepted."""

    decodes: int = 0  # windows decoded at this temperature (a fallback decodes a window again)
    n_tokens: int = 0  # of the kept sample of each
    proposed: int = 0  # every row's
    accepted: int = 0
    target_passes: int = 0
    decode_s: float = 0.0
    acceptance_rate: float | None = None  # derived by finish()


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
    audio_skipped_s: float = 0.0  # input the VAD found no speech in, not decoded
    n_tokens: int = 0
    proposed: int = 0
    accepted: int = 0
    accepted_length_histogram: Counter[int] = field(default_factory=Counter)
    target_passes: int = 0
    beam_steps: int = 0
    draft_passes: int = 0
    fallback_windows: int = 0  # windows where drafting stopped (low acceptance, or it did not pay)
    windows_decoded_again: int = 0  # windows whose first result failed (temperature fallback)
    temperature_retries: int = 0  # decodes of a window again, at the next temperature (fallback)
    windows_all_temperatures_failed: int = 0  # kept the best failed result (see TranscribeOptions)
    by_temperature: dict[str, TemperatureFigures] = field(default_factory=dict)  # keyed "0.0", "0.2", ...
    plain_passes_by_rows: Counter[int] = field(default_factory=Counter)  # plain decoding's passes, estimated
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

    def add_window(
        self, loop: LoopResult, n_tokens: int, temperature: float = 0.0, n_rows: int = 1, retry: bool = False
    ) -> None:
        """One decode of a window: its loop figures (retry: the window decoded again, at `temperature`)."""
        self.n_windows += int(not retry)
        self.temperature_retries += int(retry)
        by_t = self.by_temperature.setdefault(str(float(temperature)), TemperatureFigures())
        by_t.decodes += 1
        by_t.n_tokens += n_tokens
        by_t.proposed += loop.n_proposed
        by_t.accepted += loop.n_accepted
        by_t.target_passes += loop.n_target_passes
        by_t.decode_s += loop.decode_time_s
        self.plain_passes_by_rows[n_rows] += loop.plain_passes
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
            elif f.name == "by_temperature":
                value = {t: asdict(figures) for t, figures in value.items()}
            elif f.name == "plain_passes_by_rows":
                value = {str(n): count for n, count in sorted(value.items())}
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
    for by_t in stats.by_temperature.values():
        by_t.acceptance_rate = by_t.accepted / by_t.proposed if by_t.proposed else None
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
        # plain beam search makes one pass of B rows per step; greedy one pass per token, and one per EOT;
        # best-of sampling one pass of its rows per token of the longest sample
        passes = stats.plain_passes_by_rows
        step_s = {n_rows: single_pass_time(model, n_rows=n_rows) for n_rows in passes}
        plain_s = sum(count * step_s[n_rows] for n_rows, count in passes.items())
        stats.speedup = plain_s / decode if decode > 0 else None
        stats.speedup_kind = "estimated"
        terms = ", ".join(
            f"{count} x {step_s[n_rows] * 1000:.1f} ms ({n_rows} row{'s' if n_rows > 1 else ''})"
            for n_rows, count in sorted(passes.items())
        )
        stats.speedup_basis = (
            f"decode phase; plain estimated as target passes x one-token pass time measured on this machine: "
            f"{terms}; use --compare to measure"
        )
        stats.identical_to_target = None


_PASS_COSTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, Hashable], PassCosts]]
_PASS_COSTS = weakref.WeakKeyDictionary()


def pass_costs(model: LoadedModel, draft: str, kind: Hashable) -> PassCosts:
    """Many rows (beam search, best-of sampling; `kind` says which, how many, how hot): whether speculation
    pays with this draft is timed once per process and remembered (loop.PassCosts), so a batch of short
    files pays for the measurement once, not per file."""
    return _PASS_COSTS.setdefault(model.model, {}).setdefault((draft, kind), PassCosts())


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
