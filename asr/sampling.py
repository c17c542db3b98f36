"""How a token is chosen from a row of logits (after Whisper's rules): the draft and the verifier share one
TokenChoice, so what the draft proposes is judged by the rule that made it.

- ArgmaxChoice: greedy (temperature 0).
- GumbelChoice: sampling at temperature T by the Gumbel-max trick, with noise that is a function of (seed,
  window, temperature, sample row, position, token): argmax(logits / T + G) is a sample of softmax(logits /
  T), and it is the same sample whoever computes it. A draft that adds the same noise to its own logits
  proposes the tokens the target would sample when it agrees with it, so equality verifies them: a sampled
  transcript is token-identical with and without the draft under one seed ("coupled" sampling).
- RandomChoice: sampling from the row's own torch.Generator (the draft's side of rejection sampling,
  verify.RejectionVerifier).

The noise is a counter-based hash (splitmix64) of the key and the token id, so any subset of the vocabulary
can be scored: a token whose logit / T is more than G_SPAN below the row's best cannot win (every G lies in
[G_MIN, G_MAX]), so only the others are drawn, and the argmax is still over the whole vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .logit_filters import argmax_rows

RowKey = tuple[int, int]  # (sample row, position in the sequence): what a row's choice may depend on

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
UNIFORM_BITS = 24  # G = -log(-log(u)) with u = (m + 1/2) / 2**24, m uniform on [0, 2**24)
_U_MIN = 0.5 / 2**UNIFORM_BITS
G_MAX = -math.log(-math.log1p(-_U_MIN))  # 17.3
G_MIN = -math.log(-math.log(_U_MIN))  # -2.85
G_SPAN = G_MAX - G_MIN + 1e-3


def _mix(x: int) -> int:
    """splitmix64's finaliser on a Python int (64 bits)."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB & _MASK
    return x ^ (x >> 31)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (NumPy's uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def hash_key(*parts: int) -> int:
    """A 64-bit key from integers (each part any int; negative ones are taken modulo 2**64)."""
    h = 0
    for part in parts:
        h = _mix((h + _GOLDEN + (part & _MASK)) & _MASK)
    return h


def gumbel_noise(key: int, tokens: np.ndarray) -> np.ndarray:
    """Gumbel(0, 1) noise, float64, for each token id in `tokens` under `key`: a pure function of both."""
    x = tokens.astype(np.uint64) * np.uint64(_GOLDEN) + np.uint64(key)
    m = _mix_array(x) >> np.uint64(64 - UNIFORM_BITS)
    u = (m.astype(np.float64) + 0.5) / 2**UNIFORM_BITS
    return -np.log(-np.log(u))


class TokenChoice(Protocol):
    def choose(self, logits: Tensor, keys: Sequence[RowKey]) -> list[int]:
        """One token per row. logits: shape = (n_rows, n_vocab), after Whisper's rules (not edited);
        keys[i]: row i's (sample row, position)."""
        ...


class ArgmaxChoice:
    def choose(self, logits: Tensor, keys: Sequence[RowKey]) -> list[int]:
        return argmax_rows(logits)


ARGMAX = ArgmaxChoice()


class GumbelChoice:
    """Sampling at `temperature` with the noise of `window_key` (see hash_key)."""

    def __init__(self, window_key: int, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"sampling needs a temperature > 0, got {temperature}")
        self.window_key = window_key
        self.temperature = temperature

    def choose(self, logits: Tensor, keys: Sequence[RowKey]) -> list[int]:
        scaled = logits.detach().float().cpu() / self.temperature
        best = scaled.max(dim=-1, keepdim=True).values
        chosen = []
        for i, (row, position) in enumerate(keys):
            # only tokens within G_SPAN of the best can win: score those
            candidates = (scaled[i] >= best[i] - G_SPAN).nonzero()[:, 0].numpy()
            noise = gumbel_noise(hash_key(self.window_key, row, position), candidates)
            scores = scaled[i].numpy()[candidates].astype(np.float64) + noise
            chosen.append(int(candidates[int(scores.argmax())]))
        return chosen


class RandomChoice:
    """Sampling at `temperature`, row r drawing from generators[r]."""

    def __init__(self, generators: dict[int, torch.Generator], temperature: float) -> None:
        self.generators = generators
        self.temperature = temperature

    def choose(self, logits: Tensor, keys: Sequence[RowKey]) -> list[int]:
        probs = torch.softmax(logits.float() / self.temperature, dim=-1).cpu()
        return [
            int(torch.multinomial(probs[i], 1, generator=self.generators[row]))
            for i, (row, _) in enumerate(keys)
        ]


def row_generators(window_key: int, rows: int, stream: int) -> dict[int, torch.Generator]:
    """One generator per sample row, seeded from the window's key and a stream number (draft, verifier)."""
    return {row: torch.Generator().manual_seed(hash_key(window_key, row, stream) >> 1) for row in range(rows)}
