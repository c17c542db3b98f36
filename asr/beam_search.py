"""Plain beam search with the target alone: the reference speculative beam search must reproduce.

Semantics are openai/whisper's BeamSearchDecoder and MaximumLikelihoodRanker: each of the B live beams offers
its B + 1 best continuations; the best B candidates that do not end in EOT become the next beams (identical
sequences count once); candidates ending in EOT are kept as finished, up to round(B * patience) of them;
decoding stops once that many are finished (or at the length limit, where the best live beams are closed with
EOT). The winner maximises sum_logprob / length_penalty(length). The KV cache follows the beams by `reorder`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .logit_filters import LogitFilter, apply_filters
from .model import TextDecoder
from .speculative import LoopResult


@dataclass(frozen=True)
class BeamCandidate:
    tokens: tuple[int, ...]  # sampled tokens, without EOT
    sum_logprob: float


class BeamSearch:
    """One step of beam selection over B rows, given each row's log-probabilities (openai's rules)."""

    def __init__(self, beam_size: int, patience: float, eot: int) -> None:
        self.beam_size = beam_size
        self.max_finished = round(beam_size * patience)
        self.eot = eot
        self.finished: dict[tuple[int, ...], float] = {}

    def step(
        self, logprobs: Tensor, sequences: list[list[int]], sum_logprobs: list[float]
    ) -> tuple[list[list[int]], list[float], list[int]]:
        """logprobs: shape = (B, n_vocab), row j continuing sequences[j] (sampled tokens so far).

        Returns the next B sequences, their scores, and for each the row it extends (for cache.reorder).
        """
        scores: dict[tuple[int, ...], float] = {}
        sources: dict[tuple[int, ...], int] = {}
        top_logprobs, top_tokens = logprobs.topk(self.beam_size + 1, dim=-1)
        rows = zip(top_logprobs.tolist(), top_tokens.tolist(), strict=True)
        for row, (row_logprobs, row_tokens) in enumerate(rows):
            for logprob, token in zip(row_logprobs, row_tokens, strict=True):
                sequence = (*sequences[row], token)
                scores[sequence] = sum_logprobs[row] + logprob
                sources[sequence] = row
        next_sequences: list[list[int]] = []
        next_scores: list[float] = []
        next_sources: list[int] = []
        newly_finished: dict[tuple[int, ...], float] = {}
        for sequence in sorted(scores, key=scores.__getitem__, reverse=True):
            if sequence[-1] == self.eot:
                newly_finished[sequence] = scores[sequence]
            else:
                next_sequences.append(list(sequence))
                next_scores.append(scores[sequence])
                next_sources.append(sources[sequence])
                if len(next_sequences) == self.beam_size:
                    break
        for sequence, score in newly_finished.items():
            if len(self.finished) >= self.max_finished:
                break
            self.finished[sequence] = score
        return next_sequences, next_scores, next_sources

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.max_finished

    def candidates(self, sequences: list[list[int]], sum_logprobs: list[float]) -> list[BeamCandidate]:
        """Finished sequences; if fewer than B, the best live beams as well (closed with EOT)."""
        finished = dict(self.finished)
        for row in sorted(range(len(sequences)), key=sum_logprobs.__getitem__, reverse=True):
            if len(finished) >= self.beam_size:
                break
            finished[(*sequences[row], self.eot)] = sum_logprobs[row]
        return [BeamCandidate(tuple(s[:-1]) if s[-1] == self.eot else s, lp) for s, lp in finished.items()]


def rank(candidates: Sequence[BeamCandidate], length_penalty: float | None) -> BeamCandidate:
    """openai/whisper's MaximumLikelihoodRanker: log-probability over a length penalty (None: the length;
    else the Google NMT penalty ((5 + length) / 6) ** length_penalty)."""

    def score(candidate: BeamCandidate) -> float:
        length = len(candidate.tokens)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return candidate.sum_logprob / max(penalty, 1e-9)

    return max(candidates, key=score)


@torch.inference_mode()
def beam_search_loop(
    decoder: TextDecoder,
    audio_features: Tensor,
    filters: Sequence[LogitFilter],
    initial_tokens: list[int],
    eot: int,
    sample_len: int,
    beam_size: int,
    patience: float,
    length_penalty: float | None,
) -> LoopResult:
    """Beam search over one window with the target alone. audio_features: shape = (1, n_ctx, d)."""
    device = audio_features.device
    start = time.perf_counter()
    cache = decoder.new_cache(audio_features, n_batch=beam_size)  # cross keys/values shared by the beams
    loop_start = time.perf_counter()
    result = LoopResult(tokens=[], sum_logprob=0.0, first_logits=torch.empty(0))
    result.cross_kv_time_s = loop_start - start
    search = BeamSearch(beam_size, patience, eot)
    sequences: list[list[int]] = [[] for _ in range(beam_size)]
    sum_logprobs = [0.0] * beam_size
    inputs = torch.tensor([initial_tokens] * beam_size, device=device)
    for _ in range(sample_len):
        start = time.perf_counter()
        logits = decoder(inputs, cache)
        result.target_time_s += time.perf_counter() - start
        result.n_target_passes += 1
        if not result.first_logits.numel():
            result.first_logits = logits[0]
        rows = logits[:, -1]
        apply_filters(filters, rows, [initial_tokens + s for s in sequences])
        logprobs = torch.log_softmax(rows, dim=-1)
        sequences, sum_logprobs, sources = search.step(logprobs, sequences, sum_logprobs)
        if search.done:
            break
        cache.reorder(torch.tensor(sources, device=device))
        inputs = torch.tensor([[s[-1]] for s in sequences], device=device)
    best = rank(search.candidates(sequences, sum_logprobs), length_penalty)
    result.tokens = list(best.tokens)
    result.sum_logprob = best.sum_logprob
    result.decode_time_s = time.perf_counter() - loop_start
    return result
