"""What the decoding loops share: a window's inputs, the draft-length and cost policies, the per-pass record,
and the bookkeeping that turns one window's passes into a LoopResult.

Two loops stand on this scaffold as peers, neither importing the other: asr/sequence_loop.py (one sequence;
a Verifier decides what stands after each target pass: greedy today) and asr/beam_search.py (B beams; the
target replays beam selection over the draft's tree). Notation (Leviathan et al. 2023): p is the target's
distribution, q the draft's, k the number of tokens (beam search: steps) the draft proposes per target
pass. Plain decoding is the same loop with a drafter that proposes nothing (drafting.NoDraft).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import Tensor

from .drafting import Drafter, Window
from .kv_cache import KVCache
from .logit_filters import LogitFilter
from .model import CrossKV, TextDecoder

K_MIN, K_MAX, K_START = 1, 10, 5
# Below this acceptance rate (after FALLBACK_MIN_PROPOSED proposals) drafting stops for the window: a draft
# that is mostly wrong costs draft passes and wider target passes for nothing.
FALLBACK_ACCEPTANCE = 0.3
FALLBACK_MIN_PROPOSED = 12
# With pass costs (beam search): drafting stops once its passes (after this many) have cost more per
# committed step than a plain pass, timed in the same loop.
COST_MIN_PASSES = 1


@dataclass(frozen=True)
class WindowInputs:
    """Everything a loop reads for one 30-s window (asr/decoding.py's DecodingTask makes it)."""

    decoder: TextDecoder  # the target's
    audio_features: Tensor  # shape = (1, n_audio_ctx, n_audio_state), the target's encoder output
    mel: Tensor  # shape = (n_mels, N_FRAMES), the window's input (a draft with its own encoder reads it)
    filters: Sequence[LogitFilter]  # Whisper's rules, applied per row with that row's own prefix
    initial_tokens: list[int]  # the prompt: previous text, then the SOT sequence
    eot: int
    sample_len: int  # at most this many sampled tokens (beam search: steps)
    cross: CrossKV | None = None  # the features' cross-attention projection, when already made


@dataclass
class PassCosts:
    """The timings that decide whether speculation pays, kept across windows (and recordings: see
    figures.pass_costs): once it has lost, later windows decode plainly, and nothing more is lost."""

    plain_step_s: float | None = None  # the fastest plain step timed in the loop
    spec_s: float = 0.0  # draft and target time of the speculative passes
    spec_steps: int = 0  # the steps they committed
    spec_passes: int = 0

    @property
    def losing(self) -> bool:
        return (
            self.plain_step_s is not None
            and self.spec_passes >= COST_MIN_PASSES
            and self.spec_s > self.spec_steps * self.plain_step_s
        )


class DraftLength:
    """k for the next proposal: fixed, or adapted to recent acceptance (+2 after a full accept, -1 after a
    rejection, within [K_MIN, K_MAX], as transformers' assisted generation does).

    An adaptive k also stops drafting when speculation does not pay: for the window after a low acceptance
    rate; or, given `costs` (beam search, whose draft and tree pass cost a lot on a CPU), for good once its
    passes have cost more per committed step than the fastest plain pass seen (each window's first pass
    after the prompt runs plain to time one).
    """

    def __init__(self, fixed: int | None = None, costs: PassCosts | None = None) -> None:
        self.fixed = fixed
        self.k = fixed if fixed is not None else K_START
        self.n_proposed = 0
        self.n_accepted = 0
        self.fallen_back = False
        self.costs = costs if fixed is None else None
        self.probed = False  # with costs: each window's first pass after the prompt runs plain, timed

    def update(self, n_proposed: int, n_accepted: int) -> None:
        self.n_proposed += n_proposed
        self.n_accepted += n_accepted
        if (
            self.fixed is None
            and self.n_proposed >= FALLBACK_MIN_PROPOSED
            and self.n_accepted < FALLBACK_ACCEPTANCE * self.n_proposed
        ):
            self.fallen_back = True
        if self.fixed is None and n_proposed:
            self.k = min(self.k + 2, K_MAX) if n_accepted == n_proposed else max(self.k - 1, K_MIN)

    def timed(self, seconds: float, n_steps: int, speculative: bool) -> None:
        """One pass (after the prompt's): its draft and target time, and the steps it committed."""
        costs = self.costs
        if costs is None or n_steps == 0:
            return
        if not speculative:
            # the fastest plain step seen: a cold process's first pass must not flatter speculation
            step_s = seconds / n_steps
            costs.plain_step_s = min(costs.plain_step_s or step_s, step_s)
            self.probed = True
            return
        costs.spec_s += seconds
        costs.spec_steps += n_steps
        costs.spec_passes += 1
        self.fallen_back = self.fallen_back or costs.losing

    def next(self, remaining: int) -> int:
        """Proposing more than remaining - 1 is pointless: the target adds a token of its own."""
        costs = self.costs
        if costs is not None and (not self.probed or costs.losing):
            # a plain pass costs nothing against plain decoding: every window times one
            self.fallen_back = self.fallen_back or costs.losing
            return 0
        if self.fallen_back:
            return 0
        return max(0, min(self.k, remaining - 1))


@dataclass(frozen=True)
class PassRecord:
    """One target pass: what the draft proposed, how much of it stood, and what the pass committed."""

    n_proposed: int  # draft tokens (beam search: the depth of the draft's tree)
    n_accepted: int  # of those, accepted (beam search: beam steps replayed inside the tree)
    n_committed: int  # tokens (beam search: beam steps) the pass committed; EOT is not counted


def ranking_score(sum_logprob: float, length: int, length_penalty: float | None) -> float:
    """openai/whisper's MaximumLikelihoodRanker: log-probability over a length penalty (None: the length;
    else the Google NMT penalty ((5 + length) / 6) ** length_penalty). Beam search's finished candidates and
    best-of samples are ranked by it."""
    penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
    return sum_logprob / max(penalty, 1e-9)


@dataclass
class Sample:
    """One row's sequence (best-of sampling decodes several)."""

    tokens: list[int]  # sampled tokens, without EOT
    sum_logprob: float
    drafted: list[bool]  # per token: proposed by the draft and accepted


@dataclass
class LoopResult:
    tokens: list[int]  # sampled tokens, without EOT (of several samples, the best ranked)
    sum_logprob: float
    prompt_hidden: Tensor  # the first pass's hidden states over the prompt, shape = (n_prompt, d)
    drafted: list[bool] = field(default_factory=list)  # per token: proposed by the draft and accepted
    passes: list[PassRecord] = field(default_factory=list)  # every target pass, in order
    n_beam_steps: int = 0  # beam search: selection steps (one per sampled token of every beam)
    n_draft_passes: int = 0
    cross_kv_time_s: float = 0.0  # projecting the audio into cross-attention keys/values, once per window
    decode_time_s: float = 0.0  # the token loop after that
    draft_time_s: float = 0.0
    target_time_s: float = 0.0
    fell_back: bool = False
    samples: list[Sample] = field(default_factory=list)  # every row's sequence, the chosen one included

    @property
    def n_target_passes(self) -> int:
        return len(self.passes)

    @property
    def n_proposed(self) -> int:
        return sum(p.n_proposed for p in self.passes)

    @property
    def n_accepted(self) -> int:
        return sum(p.n_accepted for p in self.passes)

    @property
    def plain_passes(self) -> int:
        """The target passes plain decoding makes for this window: one per beam step; else one per token of
        the longest sample, and one for its EOT (a sample the length limit stopped has none)."""
        if self.n_beam_steps:
            return self.n_beam_steps
        return max((len(s.tokens) for s in self.samples), default=len(self.tokens)) + 1

    @property
    def accepted_lengths(self) -> Counter[int]:
        """How many passes with a proposal accepted n of it."""
        return Counter(p.n_accepted for p in self.passes if p.n_proposed)


T = TypeVar("T")


class LoopRun:
    """One window's bookkeeping, the same for every loop: the target's cache, the clock, starting the
    drafter on the first pass that drafts, and one PassRecord per target pass."""

    def __init__(
        self, window: WindowInputs, drafter: Drafter, draft_length: DraftLength, n_rows: int
    ) -> None:
        self.window, self.drafter, self.draft_length = window, drafter, draft_length
        start = time.perf_counter()
        # cross-attention keys/values: projected once per window, shared by every row
        self.cache: KVCache = window.decoder.new_cache(
            window.audio_features, n_batch=n_rows, cross=window.cross
        )
        self.loop_start = time.perf_counter()
        self.result = LoopResult(tokens=[], sum_logprob=0.0, prompt_hidden=torch.empty(0))
        self.result.cross_kv_time_s = self.loop_start - start
        self._draft_passes_before = drafter.n_passes
        self._drafter_started = False
        self._pass_start = self.loop_start

    def draft_k(self, remaining: int) -> int:
        """k for this pass, `remaining` tokens (steps) before the length limit. None on the first pass: the
        target's pass over the prompt gives the first token, and a draft starts from its keys/values."""
        return self.draft_length.next(remaining) if self.cache.length else 0

    def draft(
        self, k: int, tokens: list[int], n_rows: int, propose: Callable[..., T], *args: Any
    ) -> T | None:
        """`propose(*args)`, timed as draft time, if k > 0, starting the drafter for this window first.
        tokens: the committed sequence the drafter starts from; n_rows: the rows its cache needs."""
        self._pass_start = start = time.perf_counter()
        proposal = None
        if k:
            if not self._drafter_started:
                w = self.window
                self.drafter.start(Window(w.audio_features, w.mel, w.filters, self.cache, tokens, n_rows))
                self._drafter_started = True
            proposal = propose(*args)
        self.result.draft_time_s += time.perf_counter() - start
        return proposal

    @contextmanager
    def target_time(self) -> Iterator[None]:
        """Time the enclosed work as the target's."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.result.target_time_s += time.perf_counter() - start

    def keep_prompt_hidden(self, hidden: Tensor) -> None:
        """The first pass's hidden states over the prompt (no-speech probability reads the SOT row)."""
        if not self.result.prompt_hidden.numel():
            self.result.prompt_hidden = hidden

    def record(self, n_proposed: int, n_accepted: int, n_committed: int) -> None:
        """One target pass done: its record, and what the draft-length policy learns from it (its cost
        too, for every pass after the prompt's)."""
        if self.result.passes:
            seconds = time.perf_counter() - self._pass_start
            self.draft_length.timed(seconds, n_committed, n_proposed > 0)
        self.draft_length.update(n_proposed, n_accepted)
        self.result.passes.append(PassRecord(n_proposed, n_accepted, n_committed))

    def finish(
        self,
        tokens: list[int],
        sum_logprob: float,
        drafted: list[bool],
        n_beam_steps: int = 0,
        samples: list[Sample] | None = None,
    ) -> LoopResult:
        result = self.result
        result.samples = samples if samples is not None else [Sample(tokens, sum_logprob, drafted)]
        result.decode_time_s = time.perf_counter() - self.loop_start
        result.tokens, result.sum_logprob, result.drafted = tokens, sum_logprob, drafted
        result.n_beam_steps = n_beam_steps
        result.n_draft_passes = self.drafter.n_passes - self._draft_passes_before
        result.fell_back = self.draft_length.fallen_back
        return result
