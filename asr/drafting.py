"""Drafters: cheap proposers of the next k tokens, chosen from q (the draft's distribution) as the verifier
asks (asr/sampling.py: greedily, or sampled).

A drafter is two methods (the idea of transformers' candidate generators): `propose(sequences, until,
choice, rows)` continues each committed sequence (the rows of a batch: best-of samples) up to `until`
tokens, applying Whisper's rules at each position with that position's own prefix, and returns Proposals
with the draft's filtered logits; `start(window)` readies it for a new 30-s window. Beam search asks
instead for a tree (`propose_beams`). A drafter keeps its own KV cache and, on the next proposal, crops it
back to the longest prefix it shares with what the target committed.

The kinds, each a small class (asr/draft_factory.py builds them from a `--draft` name):
- NoDraft: proposes nothing; a loop is then plain decoding with the target alone.
- SelfDrafter: a cheap copy of the target's own decoder (asr/quantised.py) that starts from the target's
  encoder output and cross-attention keys/values: nothing more to load, no second encoder pass.
- NativeSelfDrafter: the same, its greedy step one native call (asr/native_draft.py).
- ModelDrafter: a smaller Whisper with the same tokenizer; if its encoder is a copy of the target's (as
  distil-whisper's is), only its decoder runs, on the target's encoder output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .kv_cache import KVCache
from .logit_filters import LogitFilter, apply_filters
from .model import TextDecoder
from .native_draft import NativeDraft, NativeWindow
from .sampling import TokenChoice


@dataclass
class Window:
    """What a drafter may use of the current window: the target's encoder output and the log-mel input."""

    audio_features: Tensor  # shape = (1, n_audio_ctx, n_audio_state), from the target's encoder
    mel: Tensor  # shape = (n_mels, N_FRAMES)
    filters: Sequence[LogitFilter]
    target_cache: KVCache  # the target's cache, after its pass over the prompt
    tokens: list[int]  # the committed tokens; the target's cache holds all but the last
    n_rows: int = 1  # the rows the drafter's cache needs: 1 for one sequence, its beam width for beam search


@dataclass(frozen=True)
class Proposal:
    """Draft tokens continuing the committed sequence, and q where the drafter has it: the draft's logits at
    each proposed position after Whisper's rules (row i is the distribution tokens[i] was chosen from)."""

    tokens: list[int]
    rows: Sequence[Tensor] = field(default=(), repr=False)  # one row per token, shape = (n_vocab,) each

    @property
    def logits(self) -> Tensor | None:
        """q's logits, shape = (len(tokens), n_vocab), or None if the drafter gives none."""
        return torch.stack(list(self.rows)) if self.rows else None


NO_PROPOSAL = Proposal([])
# Matching each root to the cache row sharing the most with it compares every pair: up to this many pairs.
SYNC_SEARCH_LIMIT = 4096
# Beam search's proposal: every beam the draft kept at every step, as (index of its root, path below it).
TreeProposal = list[tuple[int, list[int]]]


class Drafter(ABC):
    name: str  # the draft's name in the figures
    step: str | None = None  # how draft steps run, for the figures: "native", "pytorch", or None (no draft)

    @abstractmethod
    def start(self, window: Window) -> None:
        """Forget the previous window and prepare for this one."""

    @abstractmethod
    def propose(
        self, sequences: list[list[int]], until: int, choice: TokenChoice, rows: Sequence[int]
    ) -> list[Proposal]:
        """For each committed sequence (prompt included), the tokens continuing it up to `until` tokens in
        all (none for one as long already; fewer at EOT or the text context's end), each chosen by `choice`
        from the draft's logits after Whisper's rules; rows[i]: sequence i's sample row (its key)."""

    @abstractmethod
    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> TreeProposal:
        """A tree of continuations of the live beams `roots` (full sequences of equal length, prompt
        included; root_scores their summed log-probabilities): the draft's own beam search of `width`
        beams for up to k steps. Returns every beam it kept at every step."""

    @property
    def n_passes(self) -> int:
        """Forward passes run so far (for the figures)."""
        return 0


class NoDraft(Drafter):
    """Proposes nothing: plain decoding."""

    name = "none"

    def start(self, window: Window) -> None:
        pass

    def propose(
        self, sequences: list[list[int]], until: int, choice: TokenChoice, rows: Sequence[int]
    ) -> list[Proposal]:
        return [NO_PROPOSAL for _ in sequences]

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> TreeProposal:
        return []


class DecoderDrafter(Drafter):
    """Proposals from a Whisper decoder with its own KV cache. Subclasses say how a window starts; `_step`
    runs one forward pass (PyTorch modules here)."""

    step = "pytorch"

    def __init__(self, name: str, decoder: TextDecoder, eot: int) -> None:
        self.name = name
        self.decoder = decoder
        self.eot = eot
        self.cache: KVCache | None = None
        self.fed: list[list[int]] = []  # per cache row: the tokens whose keys/values it holds
        self.filters: Sequence[LogitFilter] = ()
        self._n_passes = 0

    @property
    def n_passes(self) -> int:
        return self._n_passes

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.positional_embedding.dtype

    def _sync(self, roots: list[list[int]]) -> list[list[int]]:
        """Point cache row i at roots[i]: take the row sharing the longest prefix with it, crop every row
        to the shortest such prefix, and return what each row has still to be fed up to the shortest
        root's length (equal lengths)."""
        assert self.cache is not None, "start() first"

        def shared(row: list[int], root: list[int]) -> int:
            n, limit = 0, min(len(row), len(root))
            while n < limit and row[n] == root[n]:
                n += 1
            return n

        if len(roots) * len(self.fed) <= SYNC_SEARCH_LIMIT:
            best = [max(range(len(self.fed)), key=lambda r: shared(self.fed[r], root)) for root in roots]
        else:  # thousands of rows (a test's samples): each keeps its own row, whatever it shares
            best = list(range(len(roots)))
        n_shared = min(shared(self.fed[r], root) for r, root in zip(best, roots, strict=True))
        n_shared = min(n_shared, min(len(root) for root in roots) - 1)  # the last token is always fed
        self.cache.crop(min(n_shared, self.cache.length))
        if best != list(range(len(roots))):
            self.cache.reorder(torch.tensor(best))
        self.fed = [list(root[:n_shared]) for root in roots]
        shortest = min(len(root) for root in roots)
        return [root[n_shared:shortest] for root in roots]

    def _step(self, pending: list[list[int]]) -> Tensor:
        """Feed each row its pending tokens; the next-token logits, shape = (n_rows, n_vocab), a tensor of
        the caller's (not reused)."""
        assert self.cache is not None
        device = self.decoder.positional_embedding.device
        return self.decoder(torch.tensor(pending, device=device), self.cache)[:, -1]

    def _logits(self, pending: list[list[int]]) -> Tensor:
        logits = self._step(pending)
        self._n_passes += 1
        for row, tokens in zip(self.fed, pending, strict=True):
            row.extend(tokens)
        return logits

    def propose(
        self, sequences: list[list[int]], until: int, choice: TokenChoice, rows: Sequence[int]
    ) -> list[Proposal]:
        # The rows advance together, one position a step: a row whose committed tokens reach a position
        # feeds its own token there, a row proposing feeds its proposal, a row whose proposal ended (EOT)
        # feeds padding (EOT again: nothing reads past it).
        pending = self._sync(sequences)
        assert self.cache is not None
        until = min(until, self.cache.n_ctx)
        n = len(sequences)
        proposed: list[list[int]] = [[] for _ in range(n)]
        q_rows: list[list[Tensor]] = [[] for _ in range(n)]
        open_rows = [len(s) < until for s in sequences]
        for position in range(min(len(s) for s in sequences), until):
            if not any(open_rows):
                break
            logits = self._logits(pending)  # each row's next-token logits, for `position`
            need = [r for r in range(n) if open_rows[r] and len(sequences[r]) <= position]
            if need:
                chosen_logits = logits if len(need) == n else logits[need]
                apply_filters(self.filters, chosen_logits, [sequences[r] + proposed[r] for r in need])
                chosen = choice.choose(chosen_logits, [(rows[r], position) for r in need])
                for j, (r, token) in enumerate(zip(need, chosen, strict=True)):
                    proposed[r].append(token)
                    q_rows[r].append(chosen_logits[j])
                    open_rows[r] = token != self.eot
            pending = [
                [s[position] if position < len(s) else (p[-1] if p else self.eot)]
                for s, p in zip(sequences, proposed, strict=True)
            ]
        return [Proposal(p, q) for p, q in zip(proposed, q_rows, strict=True)]

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> TreeProposal:
        pending = self._sync(roots)
        assert self.cache is not None
        k = min(k, self.cache.n_ctx - len(roots[0]))
        width = min(width, self.cache.n_batch)
        origins, scores = list(range(len(roots))), list(root_scores)
        paths: list[list[int]] = [[] for _ in roots]
        proposed: TreeProposal = []
        for _ in range(k):
            logits = self._logits(pending)
            apply_filters(self.filters, logits, [roots[o] + p for o, p in zip(origins, paths, strict=True)])
            top_logprobs, top_tokens = torch.log_softmax(logits, dim=-1).topk(width + 1, dim=-1)
            candidates = sorted(
                (
                    (scores[row] + logprob, row, token)
                    for row, (row_logprobs, row_tokens) in enumerate(
                        zip(top_logprobs.tolist(), top_tokens.tolist(), strict=True)
                    )
                    for logprob, token in zip(row_logprobs, row_tokens, strict=True)
                    if token != self.eot
                ),
                reverse=True,
            )[:width]
            if len(candidates) < width:
                break
            sources = [row for _, row, _ in candidates]
            origins = [origins[row] for row in sources]
            paths = [[*paths[row], token] for _, row, token in candidates]
            scores = [score for score, _, _ in candidates]
            proposed.extend(zip(origins, paths, strict=True))
            self.cache.reorder(torch.tensor(sources))
            self.fed = [list(self.fed[row]) for row in sources]
            pending = [[token] for _, _, token in candidates]
        return proposed


class ModelDrafter(DecoderDrafter):
    """Another Whisper with the target's tokenizer. Its decoder projects its own cross-attention keys/values,
    from its own encoder's output on the window's mel, or (encoder None: a copy of the target's) from the
    target's encoder output."""

    def __init__(self, name: str, decoder: TextDecoder, eot: int, encoder: nn.Module | None = None) -> None:
        super().__init__(name, decoder, eot)
        self.encoder = encoder

    def start(self, window: Window) -> None:
        self.filters = window.filters
        features = window.audio_features
        if self.encoder is not None:
            features = self.encoder(window.mel.unsqueeze(0).to(self.dtype))
        self.cache = self.decoder.new_cache(features.to(self.dtype), n_batch=window.n_rows)
        self.fed = [[] for _ in range(window.n_rows)]


class SelfDrafter(DecoderDrafter):
    """A copy of the target's decoder (cheaper weights, same cross-attention projections): it starts from the
    target's keys/values for the window, so no audio projection and no prompt pass of its own (a conditioned
    window's prompt is up to 224 tokens). cross_dtype: a cheaper copy of those keys/values, once per window
    (None: the target's own, shared)."""

    def __init__(
        self, name: str, decoder: TextDecoder, eot: int, cross_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(name, decoder, eot)
        self.cross_dtype = cross_dtype

    def start(self, window: Window) -> None:
        self.filters = window.filters
        target = window.target_cache
        cross_k, cross_v = target.cross_k, target.cross_v
        if self.cross_dtype is not None:
            cross_k = [k.to(self.cross_dtype) for k in cross_k]
            cross_v = [v.to(self.cross_dtype) for v in cross_v]
        cache = self.decoder.cache_with_cross(cross_k, cross_v, n_batch=window.n_rows)
        n = target.length
        cache.self_k[:, :, :, :n] = target.self_k[:, :1, :, :n]
        cache.self_v[:, :, :, :n] = target.self_v[:, :1, :, :n]
        cache.length = n
        self.cache = cache
        self.fed = [list(window.tokens[:n]) for _ in range(window.n_rows)]


class NativeSelfDrafter(SelfDrafter):
    """The self draft whose step is one native call (draft_kernel.c: int8 weights quantised from the
    target's); `decoder`, the target's own, gives the caches their shape and float32.

    Each sample row has a cache of its own, and rows whose sequences are identical so far are one
    computation: best-of samples at a low temperature mostly agree, so a step costs about one row's pass,
    not one per row. A row that was not computed catches up (several tokens in one call) when it parts.
    """

    step = "native"

    def __init__(self, name: str, decoder: TextDecoder, eot: int, native: NativeDraft) -> None:
        super().__init__(name, decoder, eot)
        self.native = native
        self.slots: list[_NativeRow] = []  # per sample row

    def start(self, window: Window) -> None:
        self.filters = window.filters
        target = window.target_cache
        n = target.length
        self.slots = []
        for _ in range(window.n_rows):
            cache = self.decoder.cache_with_cross(target.cross_k, target.cross_v, n_batch=1)
            cache.self_k[:, :, :, :n] = target.self_k[:, :1, :, :n]
            cache.self_v[:, :, :, :n] = target.self_v[:, :1, :, :n]
            cache.length = n
            like = self.slots[0].window if self.slots else None
            native_window = self.native.window(cache, target.cross_k, target.cross_v, like)
            self.slots.append(_NativeRow(native_window, list(window.tokens[:n])))
        self.cache = self.slots[0].window.cache if self.slots else None

    def propose(
        self, sequences: list[list[int]], until: int, choice: TokenChoice, rows: Sequence[int]
    ) -> list[Proposal]:
        assert self.slots, "start() first"
        until = min(until, self.decoder.dims.n_text_ctx)
        n = len(sequences)
        proposed: list[list[int]] = [[] for _ in range(n)]
        q_rows: list[list[Tensor]] = [[] for _ in range(n)]
        open_rows = [len(s) < until for s in sequences]
        for position in range(min(len(s) for s in sequences), until):
            if not any(open_rows):
                break
            groups: dict[tuple[int, ...], list[int]] = {}
            for i in range(n):
                if open_rows[i] and len(sequences[i]) <= position:
                    groups.setdefault(tuple(sequences[i] + proposed[i]), []).append(i)
            if not groups:  # every open row has a token of its own here
                continue
            prefixes = list(groups)
            all_logits = self._prefix_logits(
                [list(p) for p in prefixes], [[rows[i] for i in groups[p]] for p in prefixes]
            )
            for prefix, logits in zip(prefixes, all_logits, strict=True):
                members = groups[prefix]
                logits = logits[None]
                apply_filters(self.filters, logits, [prefix])
                keys = [(rows[i], position) for i in members]
                chosen = choice.choose(logits.expand(len(members), -1), keys)
                for i, token in zip(members, chosen, strict=True):
                    proposed[i].append(token)
                    q_rows[i].append(logits[0])
                    open_rows[i] = token != self.eot
        return [Proposal(p, q) for p, q in zip(proposed, q_rows, strict=True)]

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> TreeProposal:
        raise NotImplementedError("beam search drafts with the batched self draft (batched=True)")

    def _prefix_logits(self, prefixes: list[list[int]], slots: list[list[int]]) -> Tensor:
        """The next-token logits after each prefix, shape = (len(prefixes), n_vocab), a tensor of the
        caller's: prefix i is computed in whichever of slots[i] (rows whose sequence it is) has the most of
        it cached, all of them in one native call (the weights read once)."""
        leaders: list[_NativeRow] = []
        last: list[int] = []
        shared = [_shared(row.fed, prefix) for row in self.slots for prefix in prefixes]
        for i, (prefix, candidates) in enumerate(zip(prefixes, slots, strict=True)):
            n = len(prefixes)
            # the row computing it: the candidate with the most of it cached...
            best = max(candidates, key=lambda slot: shared[slot * n + i])
            row, n_own = self.slots[best], min(shared[best * n + i], len(prefix) - 1)
            row.window.cache.crop(min(n_own, row.window.cache.length))
            # ...and the keys/values of what any row has of it beyond that, copied (rows that agreed were
            # computed once, in one of them)
            source = max(range(len(self.slots)), key=lambda slot: shared[slot * n + i])
            n_source = min(shared[source * n + i], len(prefix) - 1)
            if n_source > n_own:
                row.window.cache.copy_positions(self.slots[source].window.cache, n_own, n_source)
                n_own = n_source
            if len(prefix) - n_own > 1:  # catching up: all but the last token, one by one
                row.window.feed(prefix[n_own:-1])
            row.fed = prefix[:]
            leaders.append(row)
            last.append(prefix[-1])
        self._n_passes += 1
        if len(leaders) == 1:
            # feed() reuses its buffer, and a proposal keeps q's rows: a copy (one memcpy; torch's clone may
            # wake the thread pool for it)
            return torch.from_numpy(leaders[0].window.feed(last).numpy().copy())
        return NativeWindow.feed_rows([row.window for row in leaders], last)


def _shared(fed: list[int], prefix: list[int]) -> int:
    """How many leading tokens `fed` and `prefix` share."""
    if len(fed) < len(prefix) and prefix[: len(fed)] == fed:
        return len(fed)
    n, limit = 0, min(len(fed), len(prefix))
    while n < limit and fed[n] == prefix[n]:
        n += 1
    return n


@dataclass
class _NativeRow:
    window: NativeWindow
    fed: list[int]  # the tokens whose keys/values its cache holds
