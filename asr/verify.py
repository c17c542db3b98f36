"""Verifiers: given the target's logits over the proposed positions, decide which draft tokens stand.

Greedy verification is exact by construction: row i of the target's pass is the distribution p the target
would have computed at that position in plain decoding (same prefix, same Whisper rules), so its filtered
argmax is the token plain decoding would emit there. Accept draft tokens while they equal it; at the first
mismatch the target's own token is committed instead; after a full accept, the last row gives a bonus token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .logit_filters import LogitFilter, apply_filters


@dataclass
class Verdict:
    tokens: list[int]  # to commit: the accepted draft tokens, then the target's own token
    logprobs: list[float]  # the target's log-probability of each committed token
    n_accepted: int  # how many draft tokens stood


def argmax_rows(logits: Tensor) -> list[int]:
    """Each row's argmax (the first of equal maxima, as torch.argmax gives). logits: shape = (n_rows,
    n_vocab). On a CPU through NumPy: 6 us for a row of base's vocabulary, against 50-90 us for
    torch.argmax (2 cores); a draft step and a verification pass each take one."""
    if logits.device.type == "cpu":
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()


class GreedyVerifier:
    def __init__(self, filters: Sequence[LogitFilter]) -> None:
        self.filters = filters

    def verify(self, logits: Tensor, tokens: list[int], draft: list[int]) -> Verdict:
        """logits: shape = (len(draft) + 1, n_vocab); row i follows `tokens + draft[:i]`. Edited in place."""
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
