"""Whisper's decoding rules as small filter objects (the idea of openai/whisper's LogitFilter), and the
argmax that drafts and verifiers take after them.

Every filter edits logits in place for a batch of rows, each row with its own token prefix. One row is
greedy decoding; B rows are the live beams; k + 1 rows are the positions a speculative pass verifies, each
judged with exactly the prefix it would have had in plain decoding — so a rule that depends on the prefix
(blank at the start, timestamp pairing) gives the same answer either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

NEG_INF = float("-inf")


class LogitFilter:
    def apply(self, logits: Tensor, prefixes: Sequence[Sequence[int]]) -> None:
        """logits: shape = (n_rows, n_vocab), edited in place; prefixes[i]: every token before row i's
        position (prompt included)."""
        raise NotImplementedError


class SuppressTokens(LogitFilter):
    """Never emit these tokens (the model config's non-speech symbols and task/special tokens)."""

    def __init__(self, tokens: Sequence[int], n_vocab: int) -> None:
        self.tokens = torch.tensor(sorted({t for t in tokens if 0 <= t < n_vocab}), dtype=torch.long)

    def apply(self, logits: Tensor, prefixes: Sequence[Sequence[int]]) -> None:
        if self.tokens.device != logits.device:
            self.tokens = self.tokens.to(logits.device)
        logits.index_fill_(1, self.tokens, NEG_INF)


class SuppressAtBegin(LogitFilter):
    """At the first sampled position, forbid a blank and EOT (no empty or space-only transcript)."""

    def __init__(self, tokens: Sequence[int], sample_begin: int) -> None:
        self.tokens = list(tokens)
        self.sample_begin = sample_begin

    def apply(self, logits: Tensor, prefixes: Sequence[Sequence[int]]) -> None:
        for row, prefix in enumerate(prefixes):
            if len(prefix) == self.sample_begin:
                logits[row, self.tokens] = NEG_INF


class ApplyTimestampRules(LogitFilter):
    """Whisper's timestamp grammar (openai/whisper ApplyTimestampRules):

    - <|notimestamps|> is never emitted;
    - timestamps come in pairs (an end then the next start), except a single one right before EOT;
    - timestamps never decrease, and a segment is never empty;
    - the first token is a timestamp no later than `max_initial_timestamp_index`;
    - if the total probability of timestamps beats every single text token's, a timestamp must come.
    """

    def __init__(
        self,
        *,
        eot: int,
        no_timestamps: int,
        timestamp_begin: int,
        sample_begin: int,
        max_initial_timestamp_index: int | None,
    ) -> None:
        self.eot = eot
        self.no_timestamps = no_timestamps
        self.timestamp_begin = timestamp_begin
        self.sample_begin = sample_begin
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: Tensor, prefixes: Sequence[Sequence[int]]) -> None:
        tb = self.timestamp_begin
        logits[:, self.no_timestamps] = NEG_INF
        for row, prefix in enumerate(prefixes):
            sampled = prefix[self.sample_begin :]
            row_logits = logits[row]
            last_ts = len(sampled) >= 1 and sampled[-1] >= tb
            penultimate_ts = len(sampled) < 2 or sampled[-2] >= tb
            if last_ts:
                if penultimate_ts:  # a segment just opened: its text comes next
                    row_logits[tb:] = NEG_INF
                else:  # text then a timestamp closed a segment: the next start or EOT, not text
                    row_logits[: self.eot] = NEG_INF
            timestamps = [t for t in sampled if t >= tb]
            if timestamps:
                # Not decreasing; after a closing timestamp the next start may equal it, else must exceed it.
                floor = timestamps[-1] if last_ts and not penultimate_ts else timestamps[-1] + 1
                row_logits[tb:floor] = NEG_INF
            if not sampled:
                row_logits[:tb] = NEG_INF
                if self.max_initial_timestamp_index is not None:
                    row_logits[tb + self.max_initial_timestamp_index + 1 :] = NEG_INF
            # openai compares log-probabilities: log P(any timestamp) > max log P(text token). Both sides
            # are the logits' less the same log-normaliser, so the logits compare alike, without a
            # log-softmax over the vocabulary first (several times the cost; every row of a pass runs this).
            if torch.logsumexp(row_logits[tb:], dim=-1) > row_logits[:tb].max():
                row_logits[:tb] = NEG_INF


def apply_filters(filters: Sequence[LogitFilter], logits: Tensor, prefixes: Sequence[Sequence[int]]) -> None:
    for logit_filter in filters:
        logit_filter.apply(logits, prefixes)


def argmax_rows(logits: Tensor) -> list[int]:
    """Each row's argmax (the first of equal maxima, as torch.argmax gives). logits: shape = (n_rows,
    n_vocab). On a CPU through NumPy, many times faster than torch.argmax for one row (see the README's
    speed section); a draft step and a verification pass each take one."""
    if logits.device.type == "cpu":
        return logits.detach().numpy().argmax(axis=-1).tolist()
    return logits.argmax(dim=-1).tolist()
