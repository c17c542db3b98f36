"""Verifiers: given the target's logits over a proposal's positions, decide which draft tokens stand.

A Verifier is one method, `verify(logits, tokens, proposal) -> Verdict`; asr/sequence_loop.py takes one,
and asr/decoding.py registers each by the decoding strategy that uses it (VERIFIERS).

Greedy verification is exact by construction: row i of the target's pass is the distribution p the target
would have computed at that position in plain decoding (same prefix, same Whisper rules), so its filtered
argmax is the token plain decoding would emit there. Accept draft tokens while they equal it; at the first
mismatch the target's own token is committed instead; after a full accept, the last row gives a bonus token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .drafting import Proposal
from .logit_filters import LogitFilter, apply_filters, argmax_rows


@dataclass
class Verdict:
    tokens: list[int]  # to commit: the accepted draft tokens, then the target's own token
    logprobs: list[float]  # the target's log-probability of each committed token
    n_accepted: int  # how many draft tokens stood


class Verifier(Protocol):
    def verify(self, logits: Tensor, tokens: list[int], proposal: Proposal) -> Verdict:
        """logits: shape = (len(proposal.tokens) + 1, n_vocab), the target's unfiltered logits; row i
        follows `tokens + proposal.tokens[:i]` (tokens: the committed sequence, prompt included). May edit
        `logits` in place."""
        ...


class GreedyVerifier:
    def __init__(self, filters: Sequence[LogitFilter]) -> None:
        self.filters = filters

    def verify(self, logits: Tensor, tokens: list[int], proposal: Proposal) -> Verdict:
        draft = proposal.tokens
        prefixes = [tokens + draft[:i] for i in range(len(draft) + 1)]
        apply_filters(self.filters, logits, prefixes)
        chosen = argmax_rows(logits)
        n = 0
        while n < len(draft) and draft[n] == chosen[n]:
            n += 1
        committed = chosen[: n + 1]  # == draft[:n] + [the target's token]
        rows = torch.log_softmax(logits[: n + 1], dim=-1)
        logprobs = rows.gather(1, torch.tensor(committed, device=rows.device)[:, None])[:, 0].tolist()
        return Verdict(committed, logprobs, n)
