"""Sequences decoded pass by pass: propose -> one target pass -> verify -> commit -> crop the cache.

The draft proposes tokens after the committed ones; the target scores the uncached committed tokens and the
proposals in one pass; a Verifier (asr/verify.py) decides which proposals stand and which token of its own
the target adds. With greedy verification the output is exactly the target's own greedy output: only the
number of target passes changes. With drafting.NoDraft (nothing proposed) this same loop is plain decoding,
one target pass per token. Notation and the shared bookkeeping: asr/loop.py.

Several rows (best-of sampling) run as one batch, draft and target alike, each row with its own acceptance,
so rows commit different numbers of tokens. The target's cache keeps the positions every live row has
committed (its length: the shortest row's, less its last token); each pass a row feeds the rest of its own
committed tokens and its proposal, padded to the widest row (padding comes after a row's real tokens, so
nothing reads it, and the crop forgets it). The draft brings the rows level: the row furthest behind gets k
proposals, the others as many as take them to the same length (none for a row already there).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .drafting import NO_PROPOSAL, Drafter, Proposal
from .loop import DraftLength, LoopResult, LoopRun, Sample, WindowInputs, ranking_score
from .verify import Verifier


@dataclass
class _Row:
    id: int  # the sample row (its key for sampling)
    tokens: list[int]  # committed, prompt included
    sum_logprob: float = 0.0
    drafted: list[bool] = field(default_factory=list)
    done: bool = False


@torch.inference_mode()
def sequence_loop(
    window: WindowInputs,
    drafter: Drafter,
    verifier: Verifier,
    draft_length: DraftLength,
    n_rows: int = 1,
    length_penalty: float | None = None,
) -> LoopResult:
    """Decode `n_rows` sequences of one window (speculative when the drafter proposes); the result's tokens
    are the best ranked (loop.ranking_score with `length_penalty`), and its samples every row's."""
    run = LoopRun(window, drafter, draft_length, n_rows=n_rows)
    cache, eot = run.cache, window.eot
    device = window.audio_features.device
    sample_begin = len(window.initial_tokens)
    limit = sample_begin + window.sample_len
    rows = [_Row(r, list(window.initial_tokens)) for r in range(n_rows)]
    live = list(rows)
    while live:
        # 1. the draft proposes: the row furthest behind k tokens, the others up to its length plus k
        shortest = min(len(row.tokens) for row in live)
        k = run.draft_k(limit - shortest)
        sequences = [row.tokens for row in live]
        ids = [row.id for row in live]
        proposals = run.draft(
            k, live[0].tokens, n_rows, drafter.propose, sequences, shortest + k, verifier.draft_choice, ids
        ) or [NO_PROPOSAL] * len(live)
        # 2. one target pass over each row's uncached committed tokens and its proposal
        with run.target_time():
            logits = _target_pass(window, run, live, proposals, device, eot)
        # 3. verify each row's proposal against p, the target's distribution at each of its positions
        n_proposed = n_accepted = n_committed = 0
        for row, proposal, row_logits in zip(live, proposals, logits, strict=True):
            verdict = verifier.verify(row_logits, row.tokens, proposal, row.id)
            # 4. commit, stopping at EOT or the length limit exactly where plain decoding would
            n_before = len(row.tokens)
            for i, (token, logprob) in enumerate(zip(verdict.tokens, verdict.logprobs, strict=True)):
                row.sum_logprob += logprob
                if token == eot:
                    row.done = True
                    break
                row.tokens.append(token)
                row.drafted.append(i < verdict.n_accepted)
                if len(row.tokens) >= limit:
                    row.done = True
                    break
            n_proposed += len(proposal.tokens)
            n_accepted += verdict.n_accepted
            n_committed += len(row.tokens) - n_before
        run.record(n_proposed, n_accepted, n_committed)
        # 5. rows that ended leave the batch; the target's cache keeps what every live row has committed
        # but its last token (fed next pass)
        kept = [i for i, row in enumerate(live) if not row.done]
        if kept:
            cache.crop(min(cache.length, min(len(live[i].tokens) for i in kept) - 1))
            if kept != list(range(len(live))):
                cache.reorder(torch.tensor(kept))
        live = [live[i] for i in kept]
    samples = [Sample(row.tokens[sample_begin:], row.sum_logprob, row.drafted) for row in rows]
    best = max(samples, key=lambda s: ranking_score(s.sum_logprob, len(s.tokens), length_penalty))
    return run.finish(best.tokens, best.sum_logprob, best.drafted, samples=samples)


def _target_pass(
    window: WindowInputs,
    run: LoopRun,
    live: list[_Row],
    proposals: list[Proposal],
    device: torch.device,
    eot: int,
) -> list[Tensor]:
    """The target's logits at the positions each row's verification reads: from its last committed token
    on, one per proposed token plus one; shape = (len(proposal.tokens) + 1, n_vocab) per row."""
    decoder, cache = window.decoder, run.cache
    n_cached = cache.length
    feeds = [row.tokens[n_cached:] + p.tokens for row, p in zip(live, proposals, strict=True)]
    width = max(len(feed) for feed in feeds)
    if n_cached == 0 and len(live) > 1:
        # the first pass, over the prompt: every row's is the same, so one row is fed and copied
        hidden = decoder.hidden(torch.tensor(feeds[:1], device=device), cache)
        cache.reorder(torch.zeros(len(live), dtype=torch.long))
        hidden = hidden.expand(len(live), -1, -1)
    else:
        padded = [feed + [eot] * (width - len(feed)) for feed in feeds]
        hidden = decoder.hidden(torch.tensor(padded, device=device), cache)
    run.keep_prompt_hidden(hidden[0, : len(window.initial_tokens)])
    starts = [len(row.tokens) - 1 - n_cached for row in live]
    counts = [len(p.tokens) + 1 for p in proposals]
    if len(live) == 1:
        return [decoder.project(hidden[0, starts[0] : starts[0] + counts[0]])]
    selected = torch.cat([hidden[r, s : s + n] for r, (s, n) in enumerate(zip(starts, counts, strict=True))])
    return list(decoder.project(selected).split(counts))
