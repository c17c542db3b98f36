"""One sequence, decoded pass by pass: propose -> one target pass -> verify -> commit -> crop the cache.

The draft proposes k tokens after the committed ones; the target scores the uncached committed tokens and
all k proposals in one pass; a Verifier (asr/verify.py) decides which proposals stand and which token of
its own the target adds. With greedy verification the output is exactly the target's own greedy output:
only the number of target passes changes. With drafting.NoDraft (nothing proposed) this same loop is plain
decoding, one target pass per token. Notation and the shared bookkeeping: asr/loop.py.
"""

from __future__ import annotations

import torch

from .drafting import NO_PROPOSAL, Drafter
from .loop import DraftLength, LoopResult, LoopRun, WindowInputs
from .verify import Verifier


@torch.inference_mode()
def sequence_loop(
    window: WindowInputs, drafter: Drafter, verifier: Verifier, draft_length: DraftLength
) -> LoopResult:
    """Decode one window's sequence; speculative when the drafter proposes."""
    run = LoopRun(window, drafter, draft_length, n_rows=1)
    decoder, cache, eot = window.decoder, run.cache, window.eot
    device = window.audio_features.device
    tokens = list(window.initial_tokens)
    sample_begin = len(tokens)
    drafted: list[bool] = []
    sum_logprob = 0.0
    done = False
    while not done:
        # 1. the draft proposes k tokens after the committed ones
        k = run.draft_k(window.sample_len - (len(tokens) - sample_begin))
        proposal = run.draft(k, tokens, 1, drafter.propose, tokens, k) or NO_PROPOSAL
        # 2. one target pass over the uncached committed tokens and the k proposals
        with run.target_time():
            n_cached = cache.length
            hidden = decoder.hidden(
                torch.tensor([tokens[n_cached:] + proposal.tokens], device=device), cache
            )[0]
            run.keep_prompt_hidden(hidden[: len(tokens)])
            # only the rows verification reads: from the last committed token on, one per proposal plus one
            logits = decoder.project(hidden[len(tokens) - 1 - n_cached :])
        # 3. verify the proposal against p, the target's distribution at each of its positions
        verdict = verifier.verify(logits, tokens, proposal)
        # 4. commit, stopping at EOT or the length limit exactly where plain decoding would
        n_before = len(tokens)
        for i, (token, logprob) in enumerate(zip(verdict.tokens, verdict.logprobs, strict=True)):
            sum_logprob += logprob
            if token == eot:
                done = True
                break
            tokens.append(token)
            drafted.append(i < verdict.n_accepted)
            if len(tokens) - sample_begin >= window.sample_len:
                done = True
                break
        run.record(len(proposal.tokens), verdict.n_accepted, len(tokens) - n_before)
        # 5. roll the target's cache back to the committed tokens (the last one is fed next pass)
        cache.crop(min(cache.length, len(tokens) - 1))
    return run.finish(tokens[sample_begin:], sum_logprob, drafted)
