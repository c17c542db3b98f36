"""Verifiers: given the target's logits over a proposal's positions, decide which draft tokens stand.

A Verifier is a TokenChoice the draft must propose with (`draft_choice`) and one method, `verify(logits,
tokens, proposal, row) -> Verdict`; asr/sequence_loop.py takes one, and asr/decoding.py registers each by
the decoding strategy that uses it (VERIFIERS).

Row i of the target's pass is the distribution p the target would have computed at that position in plain
decoding (same prefix, same Whisper rules).

- EqualityVerifier (greedy, and coupled sampling): the target's own choice at each position is a function of
  p and the row's key (argmax; argmax of p / T plus the key's Gumbel noise, asr/sampling.py), so it is the
  token plain decoding would emit there. Accept draft tokens while they equal it; at the first mismatch the
  target's own token is committed instead; after a full accept, the last row gives a bonus token. The output
  is token-identical to plain decoding.
- RejectionVerifier (speculative sampling, Leviathan et al. 2023; Chen et al. 2023): accept draft token x with
  probability min(1, p(x) / q(x)), q being the distribution the draft sampled x from (its logits after
  Whisper's rules, at the same temperature); at the first rejection sample from norm(max(0, p - q)); after a
  full accept sample a bonus token from p. Each committed token is distributed exactly as p, given the
  tokens before it: the output has plain sampling's distribution, not its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .drafting import Proposal
from .logit_filters import LogitFilter, apply_filters
from .sampling import ARGMAX, RandomChoice, TokenChoice


@dataclass
class Verdict:
    tokens: list[int]  # to commit: the accepted draft tokens, then the target's own token
    logprobs: list[float]  # the target's log-probability of each committed token (temperature 1)
    n_accepted: int  # how many draft tokens stood


class Verifier(Protocol):
    draft_choice: TokenChoice  # how the draft must choose the tokens it proposes

    def verify(self, logits: Tensor, tokens: list[int], proposal: Proposal, row: int) -> Verdict:
        """logits: shape = (len(proposal.tokens) + 1, n_vocab), the target's unfiltered logits; row i
        follows `tokens + proposal.tokens[:i]` (tokens: the committed sequence, prompt included); row: the
        sample row these belong to. May edit `logits` in place."""
        ...


def _filtered(filters: Sequence[LogitFilter], logits: Tensor, tokens: list[int], draft: list[int]) -> None:
    apply_filters(filters, logits, [tokens + draft[:i] for i in range(len(logits))])


def _logprobs(logits: Tensor, committed: list[int]) -> list[float]:
    rows = torch.log_softmax(logits[: len(committed)].float(), dim=-1)
    index = torch.tensor(committed, device=rows.device)[:, None]
    return rows.gather(1, index)[:, 0].tolist()


class EqualityVerifier:
    """The target's own choice at each position (`choice`: the draft's too) decides; see the module doc."""

    def __init__(self, filters: Sequence[LogitFilter], choice: TokenChoice = ARGMAX) -> None:
        self.filters = filters
        self.draft_choice = choice

    def verify(self, logits: Tensor, tokens: list[int], proposal: Proposal, row: int = 0) -> Verdict:
        draft = proposal.tokens
        _filtered(self.filters, logits, tokens, draft)
        chosen = self.draft_choice.choose(logits, [(row, len(tokens) + i) for i in range(len(logits))])
        n = 0
        while n < len(draft) and draft[n] == chosen[n]:
            n += 1
        committed = chosen[: n + 1]  # == draft[:n] + [the target's token]
        return Verdict(committed, _logprobs(logits, committed), n)


class GreedyVerifier(EqualityVerifier):
    def __init__(self, filters: Sequence[LogitFilter]) -> None:
        super().__init__(filters, ARGMAX)


class RejectionVerifier:
    """Speculative sampling at `temperature`; the draft samples with `draft_generators`, the verifier draws
    its coins and corrections from `generators` (one per sample row each)."""

    def __init__(
        self,
        filters: Sequence[LogitFilter],
        temperature: float,
        generators: dict[int, torch.Generator],
        draft_generators: dict[int, torch.Generator],
    ) -> None:
        self.filters = filters
        self.temperature = temperature
        self.generators = generators
        self.draft_choice: TokenChoice = RandomChoice(draft_generators, temperature)

    def verify(self, logits: Tensor, tokens: list[int], proposal: Proposal, row: int = 0) -> Verdict:
        draft = proposal.tokens
        _filtered(self.filters, logits, tokens, draft)
        generator = self.generators[row]
        p = torch.softmax(logits.float().cpu() / self.temperature, dim=-1)
        committed: list[int] = []
        q_logits = proposal.logits
        if draft:
            assert q_logits is not None, "rejection sampling needs the draft's q"
            q = torch.softmax(q_logits.float().cpu() / self.temperature, dim=-1)
            coins = torch.rand(len(draft), generator=generator).tolist()
            for i, x in enumerate(draft):
                if coins[i] * float(q[i, x]) < float(p[i, x]):
                    committed.append(x)
                    continue
                residual = (p[i] - q[i]).clamp_(min=0)
                if not float(residual.sum()) > 0:  # p == q up to rounding: a rejection cannot happen
                    residual = p[i]
                committed.append(int(torch.multinomial(residual, 1, generator=generator)))
                return Verdict(committed, _logprobs(logits, committed), i)
        committed.append(int(torch.multinomial(p[len(draft)], 1, generator=generator)))
        return Verdict(committed, _logprobs(logits, committed), len(draft))
