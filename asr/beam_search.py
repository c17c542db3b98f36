"""Beam search, plain or speculative (the draft proposes a tree; the target replays beam selection on it).

Semantics are openai/whisper's BeamSearchDecoder and MaximumLikelihoodRanker: each of the B live beams offers
its B + 1 best continuations; the best B candidates that do not end in EOT become the next beams (identical
sequences count once); candidates ending in EOT are kept as finished, up to round(B * patience) of them;
decoding stops once that many are finished (or at the length limit, where the best live beams are closed with
EOT). The winner maximises sum_logprob / length_penalty(length). The KV cache follows the beams by `reorder`
(plain) or `select` (a path of the tree). The loop stands beside asr/sequence_loop.py on asr/loop.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .drafting import Drafter, TreeProposal
from .logit_filters import apply_filters
from .loop import DraftLength, LoopResult, LoopRun, WindowInputs, ranking_score
from .model import TextDecoder


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
    """The best candidate by openai/whisper's MaximumLikelihoodRanker (loop.ranking_score)."""

    return max(candidates, key=lambda c: ranking_score(c.sum_logprob, len(c.tokens), length_penalty))


# The draft's beam search keeps DRAFT_WIDTH x B beams: the target's B-th and (B+1)-th candidates are often
# near ties that a draft ranks the other way; a wider draft beam keeps both in the tree.
DRAFT_WIDTH = 2


class ProposalTree:
    """What the target scores in one pass, as one row per live beam (a root): the root's pending tokens
    (those not in the cache yet: the prompt on the first pass, then its last token), then every node the
    draft proposed below it, flat, each node seeing the cache, the pending tokens and its own ancestors.

    nodes maps a sequence (prompt included) to the (row, slot) whose output is its next-token distribution.
    """

    def __init__(
        self,
        roots: list[list[int]],
        pending: list[list[int]],
        proposals: list[tuple[int, list[int]]],
        n_cached: int,
        pad: int,
        n_ctx: int,
    ) -> None:
        self.n_cached = n_cached
        rows = [list(p) for p in pending]
        self.parents = [list(range(-1, len(p) - 1)) for p in pending]  # per slot; -1: none
        depths = [list(range(len(p))) for p in pending]
        slot_of: dict[tuple[int, tuple[int, ...]], int] = {(r, ()): len(p) - 1 for r, p in enumerate(pending)}
        self.nodes = {tuple(root): (r, len(pending[r]) - 1) for r, root in enumerate(roots)}
        for origin, path in proposals:  # in step order: a node's parent comes before it
            key = (origin, tuple(path))
            if key in slot_of or (origin, key[1][:-1]) not in slot_of:
                continue  # known, or its parent did not fit
            if n_cached + len(rows[origin]) >= n_ctx:
                continue  # the row's slots would run past the text context: left out, with what follows
            parent = slot_of[(origin, key[1][:-1])]
            slot_of[key] = slot = len(rows[origin])
            rows[origin].append(path[-1])
            self.parents[origin].append(parent)
            depths[origin].append(depths[origin][parent] + 1)
            self.nodes[(*roots[origin], *path)] = (origin, slot)
        width = max(len(row) for row in rows)
        self.tokens = [row + [pad] * (width - len(row)) for row in rows]
        self.mask: Tensor | None = None
        self.positions: Tensor | None = None
        if proposals:
            # padding sees the cache and itself: never read, and no row of the mask is empty
            mask = torch.zeros(len(rows), width, n_cached + width, dtype=torch.bool)
            mask[:, :, :n_cached] = True
            for r, parents in enumerate(self.parents):
                for slot in range(width):
                    if slot < len(parents) and parents[slot] >= 0:
                        mask[r, slot] = mask[r, parents[slot]]
                    mask[r, slot, n_cached + slot] = True
            self.mask = mask[:, None]
            self.positions = torch.tensor([d + [0] * (width - len(d)) for d in depths]) + n_cached

    def path_positions(self, row: int, slot: int) -> list[int]:
        """The cache positions holding a node's sequence, in order: the cache, then its slots' ancestry."""
        slots = []
        while slot >= 0:
            slots.append(self.n_cached + slot)
            slot = self.parents[row][slot]
        return [*range(self.n_cached), *reversed(slots)]


def _project(
    decoder: TextDecoder,
    hidden: Tensor,
    nodes: list[tuple[int, int]],
    known: dict[tuple[int, int], Tensor],
) -> dict[tuple[int, int], Tensor]:
    """Logits of the (row, slot) nodes not yet in `known`, added to it. hidden: shape = (n_rows, width, d)."""
    missing = list(dict.fromkeys(node for node in nodes if node not in known))
    if missing:
        rows, slots = zip(*missing, strict=True)
        logits = decoder.project(hidden[list(rows), list(slots)])
        known.update(zip(missing, logits, strict=True))
    return known


@torch.inference_mode()
def beam_search_loop(
    window: WindowInputs,
    drafter: Drafter,
    draft_length: DraftLength,
    beam_size: int,
    patience: float,
    length_penalty: float | None,
) -> LoopResult:
    """Beam search over one window, speculative when the drafter proposes; plain with drafting.NoDraft.

    Per pass: 1. the draft runs its own beam search (2B wide) from the B live beams for k steps: a tree;
    2. the target runs ONE pass over the whole tree, a row per live beam holding the nodes below it (tree
    attention: a node sees only its ancestors); 3. beam selection is replayed step by step on the target's
    own log-probabilities for as long as every beam it selects was scored in the pass, and the first step
    that leaves the tree is still exact (its beams' distributions are known): so the beams, their scores
    and the winner are plain beam search's (Leviathan et al. 2023, appendix A.4); 4. each new beam's cache
    row takes its parent's keys/values, the tree's slots laid out in sequence order.
    """
    run = LoopRun(window, drafter, draft_length, n_rows=beam_size)  # cross keys/values shared by the rows
    decoder, cache, filters, initial_tokens = window.decoder, run.cache, window.filters, window.initial_tokens
    device = window.audio_features.device
    draft_width = DRAFT_WIDTH * beam_size
    search = BeamSearch(beam_size, patience, window.eot)
    # B identical empty beams at first: one root, one row, like openai's B rows of the same prompt
    sequences: list[list[int]] = [[]]
    sum_logprobs = [0.0]
    drafted: dict[tuple[int, ...], list[bool]] = {(): []}  # per live or finished sequence, per token
    pending = [list(initial_tokens)]
    n_steps = 0
    done = False
    while not done:
        roots = [initial_tokens + s for s in sequences]
        # 1. the draft's tree (nothing on the first pass: the target's pass over the prompt comes first)
        k = run.draft_k(window.sample_len - n_steps)
        tree_args = (roots, sum_logprobs, k, draft_width)
        proposals: TreeProposal = run.draft(k, roots[0], draft_width, drafter.propose_beams, *tree_args) or []
        # 2. one target pass over every root's row: its pending tokens and its part of the tree
        with run.target_time():
            n_cached = cache.length
            tree = ProposalTree(roots, pending, proposals, n_cached, window.eot, cache.n_ctx)
            mask = tree.mask.to(device) if tree.mask is not None else None
            positions = tree.positions.to(device) if tree.positions is not None else None
            hidden = decoder.hidden(torch.tensor(tree.tokens, device=device), cache, mask, positions)
            run.keep_prompt_hidden(hidden[0, : len(initial_tokens)])
            # the vocabulary head, in one product, for the nodes the target will most likely select: each
            # root and the draft's best B at each depth (others, should the target select them, come later)
            likely = [tree.nodes[tuple(root)] for root in roots]
            depth_counts: Counter[int] = Counter()
            for origin, path in proposals:
                depth_counts[len(path)] += 1
                if depth_counts[len(path)] <= beam_size:
                    likely.append(tree.nodes[(*roots[origin], *path)])
            logits_at = _project(decoder, hidden, likely, {})
        # 3. replay beam selection on the target's distributions while the tree holds the live beams
        n_steps_before = n_steps
        while not done:
            keys = [(*initial_tokens, *s) for s in sequences]
            if not all(key in tree.nodes for key in keys):
                break  # a beam the draft did not propose: its distribution is the next pass's
            nodes = [tree.nodes[key] for key in keys]
            if n_steps == 0:  # the first step: B copies of the one root (openai feeds B equal rows)
                nodes, sequences, sum_logprobs = (
                    nodes * beam_size,
                    sequences * beam_size,
                    sum_logprobs * beam_size,
                )
            with run.target_time():
                logits_at = _project(decoder, hidden, nodes, logits_at)
                logits = torch.stack([logits_at[node] for node in nodes])
            apply_filters(filters, logits, [initial_tokens + s for s in sequences])
            logprobs = torch.log_softmax(logits, dim=-1)
            sequences, sum_logprobs, sources = search.step(logprobs, sequences, sum_logprobs)
            parents_at = [nodes[i] for i in sources]
            n_steps += 1
            done = search.done or n_steps >= window.sample_len
            for sequence in [*sequences, *(f[:-1] for f in search.finished)]:
                if tuple(sequence) not in drafted:  # a new sequence: was its last token the draft's?
                    from_draft = (*initial_tokens, *sequence) in tree.nodes
                    drafted[tuple(sequence)] = [*drafted[tuple(sequence[:-1])], from_draft]
        depth = max((len(path) for _, path in proposals), default=0)  # draft steps proposed
        n_committed = n_steps - n_steps_before
        run.record(depth, min(n_committed - 1, depth) if depth else 0, n_committed)
        if done:
            break
        # 4. each new beam's cache row: its parent's keys/values, the tree's slots laid out as a sequence
        with run.target_time():
            cache.select(
                torch.tensor([row for row, _ in parents_at], device=device),
                torch.tensor([tree.path_positions(row, slot) for row, slot in parents_at], device=device),
            )
        pending = [[s[-1]] for s in sequences]
        drafted = {tuple(s): drafted[tuple(s)] for s in [*sequences, *(f[:-1] for f in search.finished)]}
    best = rank(search.candidates(sequences, sum_logprobs), length_penalty)
    return run.finish(list(best.tokens), best.sum_logprob, drafted[best.tokens], n_beam_steps=n_steps)
