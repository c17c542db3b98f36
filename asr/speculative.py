"""The decoding loop: propose -> one target pass -> verify -> crop caches -> figures.

Notation (Leviathan et al. 2023): p is the target's distribution, q the draft's, k the number of tokens the
draft proposes per target pass. With greedy decoding both are taken as argmax after Whisper's rules, and the
output is exactly the target's own greedy output: only the number of target passes changes. With the
`none` drafter (k tokens never come) this same loop is plain greedy decoding, one target pass per token.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .drafting import Drafter, Window
from .logit_filters import LogitFilter
from .model import CrossKV, TextDecoder
from .verify import GreedyVerifier

K_MIN, K_MAX, K_START = 1, 10, 5
# Below this acceptance rate (after FALLBACK_MIN_PROPOSED proposals) drafting stops for the window: a draft
# that is mostly wrong costs draft passes and wider target passes for nothing.
FALLBACK_ACCEPTANCE = 0.3
FALLBACK_MIN_PROPOSED = 12


# Beam search: drafting stops once its passes (after this many) have cost more per committed step than a
# plain pass, timed in the same loop.
COST_MIN_PASSES = 1


@dataclass
class PassCosts:
    """The timings that decide whether speculation pays, kept across windows (and recordings: see
    transcribe.pass_costs): once it has lost, later windows decode plainly, and nothing more is lost."""

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


@dataclass
class LoopResult:
    tokens: list[int]  # sampled tokens, without EOT
    sum_logprob: float
    prompt_hidden: Tensor  # the first pass's hidden states over the prompt, shape = (n_prompt, d)
    drafted: list[bool] = field(default_factory=list)  # per token: proposed by the draft and accepted
    n_target_passes: int = 0
    n_beam_steps: int = 0  # beam search: selection steps (one per sampled token of every beam)
    n_draft_passes: int = 0
    n_proposed: int = 0
    n_accepted: int = 0
    accepted_lengths: Counter = field(default_factory=Counter)  # accepted length per pass that had a draft
    cross_kv_time_s: float = 0.0  # projecting the audio into cross-attention keys/values, once per window
    decode_time_s: float = 0.0  # the token loop after that
    draft_time_s: float = 0.0
    target_time_s: float = 0.0
    fell_back: bool = False


@torch.inference_mode()
def decode_loop(
    decoder: TextDecoder,
    audio_features: Tensor,
    mel: Tensor,
    filters: Sequence[LogitFilter],
    initial_tokens: list[int],
    eot: int,
    sample_len: int,
    drafter: Drafter,
    draft_length: DraftLength,
    cross: CrossKV | None = None,
) -> LoopResult:
    """Greedy decoding of one window, speculative when the drafter proposes.

    audio_features: shape = (1, n_audio_ctx, n_audio_state); mel: shape = (n_mels, N_FRAMES); cross: the
    features' cross-attention projection, if already made.
    """
    device = audio_features.device
    start = time.perf_counter()
    cache = decoder.new_cache(audio_features, n_batch=1, cross=cross)
    loop_start = time.perf_counter()
    verifier = GreedyVerifier(filters)
    tokens = list(initial_tokens)
    sample_begin = len(tokens)
    result = LoopResult(tokens=[], sum_logprob=0.0, prompt_hidden=torch.empty(0))
    result.cross_kv_time_s = loop_start - start
    draft_passes_before = drafter.n_passes
    started = done = False
    while not done:
        # 1. the draft proposes k tokens after the committed ones (none on the first pass: the target's
        #    pass over the prompt gives the first token, and the draft starts from its keys/values)
        k = draft_length.next(sample_len - (len(tokens) - sample_begin)) if cache.length else 0
        start = time.perf_counter()
        if k and not started:
            drafter.start(Window(audio_features, mel, filters, cache, tokens))
            started = True
        draft = drafter.propose(tokens, k) if k else []
        result.draft_time_s += time.perf_counter() - start
        # 2. one target pass over the uncached committed tokens and the k proposals
        start = time.perf_counter()
        n_cached = cache.length
        hidden = decoder.hidden(torch.tensor([tokens[n_cached:] + draft], device=device), cache)[0]
        if not result.prompt_hidden.numel():
            result.prompt_hidden = hidden[: len(tokens)]
        # only the rows verification reads: from the last committed token on, one per proposal plus one
        logits = decoder.project(hidden[len(tokens) - 1 - n_cached :])
        result.target_time_s += time.perf_counter() - start
        result.n_target_passes += 1
        # 3. verify each proposed token against the target's choice at its position
        verdict = verifier.verify(logits, tokens, draft)
        if draft:
            result.n_proposed += len(draft)
            result.n_accepted += verdict.n_accepted
            result.accepted_lengths[verdict.n_accepted] += 1
        draft_length.update(len(draft), verdict.n_accepted)
        # 4. commit, stopping at EOT or the length limit exactly where plain decoding would
        for i, (token, logprob) in enumerate(zip(verdict.tokens, verdict.logprobs, strict=True)):
            result.sum_logprob += logprob
            if token == eot:
                done = True
                break
            tokens.append(token)
            result.drafted.append(i < verdict.n_accepted)
            if len(tokens) - sample_begin >= sample_len:
                done = True
                break
        # 5. roll the target's cache back to the committed tokens (the last one is fed next pass)
        cache.crop(min(cache.length, len(tokens) - 1))
    result.decode_time_s = time.perf_counter() - loop_start
    result.tokens = tokens[sample_begin:]
    result.n_draft_passes = drafter.n_passes - draft_passes_before
    result.fell_back = draft_length.fallen_back
    return result
