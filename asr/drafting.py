"""Drafters: cheap proposers of the next k tokens (q, the draft distribution, taken greedily).

A drafter is two methods (the idea of transformers' candidate generators): `propose(tokens, k)` continues
the committed prefix with up to k tokens, applying Whisper's rules at each position with that position's
own prefix; `start(window)` readies it for a new 30-s window. It keeps its own KV cache and, on the next
proposal, crops it back to the longest prefix it shares with what the target committed.

- `none`: proposes nothing; the loop is then plain greedy decoding with the target alone.
- `self`: a cheap copy of the target's own decoder (int8 linears and head on a CPU, see self_draft_dtype)
  that reads the target's encoder output and cross-attention keys/values: nothing more to load, no second
  encoder pass. On a CPU, greedy, its step is one native call (native_draft.py) where a C compiler and
  AVX2 are available, else PyTorch modules.
- a model name: a smaller Whisper with the same tokenizer. If its encoder is a copy of the target's (as
  distil-whisper's is), only its decoder runs, on the target's encoder output.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import IncompatibleModelsError, InvalidOptionError
from .kv_cache import KVCache
from .logit_filters import LogitFilter, apply_filters
from .model import DECODER_ROWS, Linear, TextDecoder
from .models import LoadedModel, load_model
from .native_draft import NativeDraft, NativeWindow, quantise_int8
from .native_draft import library as native_library
from .verify import argmax_rows

logger = logging.getLogger("asr")


@dataclass
class Window:
    """What a drafter may use of the current window: the target's encoder output and the log-mel input."""

    audio_features: Tensor  # shape = (1, n_audio_ctx, n_audio_state), from the target's encoder
    mel: Tensor  # shape = (n_mels, N_FRAMES)
    filters: Sequence[LogitFilter]
    target_cache: KVCache  # the target's cache, after its pass over the prompt
    tokens: list[int]  # the committed tokens; the target's cache holds all but the last
    n_rows: int = 1  # the rows the drafter's cache needs: 1 for greedy, its beam width for beam search


class Drafter:
    name = "none"

    def start(self, window: Window) -> None:
        """Forget the previous window and prepare for this one."""

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens continuing `tokens` (the committed sequence, prompt included)."""
        return []

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> list[tuple[int, list[int]]]:
        """A tree of continuations of the live beams `roots` (full sequences of equal length, prompt
        included; root_scores their summed log-probabilities): the draft's own beam search of `width`
        beams for up to k steps. Returns every beam it kept at every step as (root index, path)."""
        return []

    @property
    def n_passes(self) -> int:
        """Forward passes run so far (for the figures)."""
        return 0

    @property
    def step(self) -> str | None:
        """How draft steps run, for the figures: "native" (draft_kernel.c), "pytorch", or None (no draft)."""
        return None


class DecoderDrafter(Drafter):
    """Greedy proposals from a Whisper decoder with its own KV cache."""

    def __init__(
        self,
        name: str,
        decoder: TextDecoder,
        eot: int,
        encoder: nn.Module | None = None,
        share_cross: bool = False,
        cross_dtype: torch.dtype | None = None,
        native: NativeDraft | None = None,
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.encoder = encoder  # None: the decoder reads the target's encoder output
        # A copy of the target's decoder has the target's cross-attention projections: it reads the keys and
        # values the target computed for the window instead of projecting the audio again.
        self.share_cross = share_cross
        self.cross_dtype = cross_dtype  # a cheaper copy of the shared keys/values, once per window
        # The step as one native call for one row (greedy); `decoder` (the target's) then gives the
        # cache's shape.
        self.native = native
        self.native_window: NativeWindow | None = None
        self.eot = eot
        self.cache: KVCache | None = None
        self.fed: list[list[int]] = []  # per cache row: the tokens whose keys/values it holds
        self.filters: Sequence[LogitFilter] = ()
        self._n_passes = 0

    @property
    def n_passes(self) -> int:
        return self._n_passes

    @property
    def step(self) -> str:
        return "pytorch" if self.native is None else "native"

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.positional_embedding.dtype

    def start(self, window: Window) -> None:
        self.filters = window.filters
        if self.share_cross:
            # Start from the target's keys/values: no audio projection, and no prompt pass of our own (a
            # conditioned window's prompt is up to 224 tokens, costly in fp16 on a CPU).
            target = window.target_cache
            cross_k, cross_v = target.cross_k, target.cross_v
            native = self.native if window.n_rows == 1 else None
            if self.cross_dtype is not None and native is None:
                cross_k = [k.to(self.cross_dtype) for k in cross_k]
                cross_v = [v.to(self.cross_dtype) for v in cross_v]
            cache = self.decoder.cache_with_cross(cross_k, cross_v, n_batch=window.n_rows)
            n = target.length
            cache.self_k[:, :, :, :n] = target.self_k[:, :1, :, :n]
            cache.self_v[:, :, :, :n] = target.self_v[:, :1, :, :n]
            cache.length = n
            self.cache = cache
            self.native_window = native.window(cache, cross_k, cross_v) if native else None
            self.fed = [list(window.tokens[:n]) for _ in range(window.n_rows)]
            return
        features = window.audio_features
        if self.encoder is not None:
            features = self.encoder(window.mel.unsqueeze(0).to(self.dtype))
        self.cache = self.decoder.new_cache(features.to(self.dtype), n_batch=window.n_rows)
        self.fed = [[] for _ in range(window.n_rows)]

    def _sync(self, roots: list[list[int]]) -> list[list[int]]:
        """Point cache row i at roots[i]: take the row sharing the longest prefix with it, crop every row
        to the shortest such prefix, and return what each row has still to be fed (equal lengths)."""
        assert self.cache is not None, "start() first"

        def shared(row: list[int], root: list[int]) -> int:
            n, limit = 0, min(len(row), len(root))
            while n < limit and row[n] == root[n]:
                n += 1
            return n

        best = [max(range(len(self.fed)), key=lambda r: shared(self.fed[r], root)) for root in roots]
        n_shared = min(shared(self.fed[r], root) for r, root in zip(best, roots, strict=True))
        n_shared = min(n_shared, min(len(root) for root in roots) - 1)  # the last token is always fed
        self.cache.crop(min(n_shared, self.cache.length))
        if best != list(range(len(roots))):
            self.cache.reorder(torch.tensor(best))
        self.fed = [list(root[:n_shared]) for root in roots]
        return [root[n_shared:] for root in roots]

    def _logits(self, pending: list[list[int]]) -> Tensor:
        """The next-token logits of each row after feeding it `pending`: shape = (n_rows, n_vocab)."""
        assert self.cache is not None
        if self.native_window is not None:
            (tokens,) = pending
            logits = self.native_window.feed(tokens)
        else:
            device = self.decoder.positional_embedding.device
            logits = self.decoder(torch.tensor(pending, device=device), self.cache)[:, -1]
        self._n_passes += 1
        for row, tokens in zip(self.fed, pending, strict=True):
            row.extend(tokens)
        return logits

    def propose(self, tokens: list[int], k: int) -> list[int]:
        pending = self._sync([tokens])
        assert self.cache is not None
        k = min(k, self.cache.n_ctx - len(tokens))
        proposal: list[int] = []
        for _ in range(k):
            logits = self._logits(pending)
            apply_filters(self.filters, logits, [tokens + proposal])
            (token,) = argmax_rows(logits)
            proposal.append(token)
            if token == self.eot:
                break
            pending = [[token]]
        return proposal

    def propose_beams(
        self, roots: list[list[int]], root_scores: list[float], k: int, width: int
    ) -> list[tuple[int, list[int]]]:
        pending = self._sync(roots)
        assert self.cache is not None
        k = min(k, self.cache.n_ctx - len(roots[0]))
        width = min(width, self.cache.n_batch)
        origins, scores = list(range(len(roots))), list(root_scores)
        paths: list[list[int]] = [[] for _ in roots]
        proposed: list[tuple[int, list[int]]] = []
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


class CastLinear(nn.Module):
    """A linear layer whose weights are stored in a cheaper dtype; float32 in, float32 out.

    On this CPU an fp16 product of one row runs ~5x faster than the default fp32 one (it reads half the
    bytes, with a better kernel); bf16 weights are packed for oneDNN like the target's (10 rows, a beam
    draft's step: 13 ms unpacked, 6.4 ms packed, for base's decoder and head). Whisper's released weights are
    fp16 to begin with: only the activations are rounded.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> None:
        super().__init__()
        # Output-major whatever the source's layout: fp16 products run ~40x slower here on a transposed one.
        self.linear = Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
        self.linear.weight = nn.Parameter(weight.detach().to(dtype).contiguous(), requires_grad=False)
        if bias is not None:
            self.linear.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        self.linear.pack(DECODER_ROWS)
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.to(self.dtype)).to(x.dtype)


class Int8Linear(nn.Module):
    """A linear layer with int8 weights (one scale per output) and bf16 products; float32 in, float32 out.

    A quarter of fp32's bytes, and the CPU kernel reads them fast for a row or two: one greedy step of
    base's self draft took 6.2-6.8 ms against 7.3-8.6 ms for fp16 weights (with its cross-attention in bf16,
    see cross_attend; 2 cores, Zen 4), and 98% of its tokens were still the target's on 19 English clips.
    Only the weights are quantised: the activations stay bf16 (quantising them too, as dynamic quantisation
    does, kept 69%).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.weight, scale = quantise_int8(weight)
        self.scale = scale.to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().to(torch.bfloat16)

    @staticmethod
    def supports(weight: Tensor) -> bool:
        # the CPU kernel needs an input width that is a multiple of 16 (it gives wrong results or crashes
        # otherwise, torch 2.13); every Whisper's is
        return weight.device.type == "cpu" and weight.shape[1] % 16 == 0

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).view(*x.shape[:-1], -1)


def cheap_linear(weight: Tensor, bias: Tensor | None, dtype: torch.dtype) -> nn.Module:
    """A draft's copy of a linear layer: int8 (Int8Linear) where the kernel allows it, else fp16/bf16."""
    if dtype == torch.int8:
        if Int8Linear.supports(weight):
            return Int8Linear(weight, bias)
        dtype = torch.float16
    return CastLinear(weight, bias, dtype)


def self_draft_decoder(target: LoadedModel, dtype: torch.dtype = torch.float16) -> TextDecoder:
    """A cheap copy of the target's decoder: linears and vocabulary head in `dtype` (int8, fp16 or bf16),
    the rest as in the target. Measured on 8 English clips with base: an fp16 or bf16 copy proposed only
    tokens the target accepted, where dynamic quantisation to int8 kept 69% and a head cut to the first 16k
    tokens 71% (ids do not follow English frequency)."""
    source = target.model.decoder
    with torch.device("meta"):
        decoder = TextDecoder(source.dims)
    decoder.load_state_dict({k: v.detach().clone() for k, v in source.state_dict().items()}, assign=True)
    decoder.eval().requires_grad_(False)
    for block in decoder.blocks:
        for owner, name in (
            (block.attn, "qkv"),
            (block.attn, "out"),
            (block.cross_attn, "q"),
            (block.cross_attn, "out"),
            (block, "fc1"),
            (block, "fc2"),
        ):
            linear = getattr(owner, name)
            setattr(owner, name, cheap_linear(linear.weight, linear.bias, dtype))
    decoder.set_head(cheap_linear(decoder.token_embedding.weight, None, dtype))
    return decoder


def check_compatible(draft: LoadedModel, target: LoadedModel) -> None:
    """A draft must speak the target's tokens: same vocabulary, same special tokens, same BPE."""
    a, b = draft.tokenizer, target.tokenizer
    if draft.dims.n_mels != target.dims.n_mels:
        raise IncompatibleModelsError(
            f"draft {draft.name!r} cannot draft for {target.name!r}: it reads {draft.dims.n_mels}-bin "
            f"log-mel input, the target {target.dims.n_mels}-bin"
        )
    same = (
        draft.dims.n_vocab == target.dims.n_vocab
        and (a.eot, a.sot, a.no_timestamps) == (b.eot, b.sot, b.no_timestamps)
        and a.bpe.get_vocab_size() == b.bpe.get_vocab_size()
        and a.encode(" The quick brown fox, 1999.") == b.encode(" The quick brown fox, 1999.")
    )
    if not same:
        raise IncompatibleModelsError(
            f"draft {draft.name!r} cannot draft for {target.name!r}: their tokenizers differ "
            f"(vocabularies of {draft.dims.n_vocab} and {target.dims.n_vocab} tokens); choose a draft "
            "with the target's tokenizer, or --draft self"
        )


_SAME_ENCODER: weakref.WeakKeyDictionary[nn.Module, weakref.WeakKeyDictionary[nn.Module, bool]]
_SAME_ENCODER = weakref.WeakKeyDictionary()


def _same_encoder(draft: LoadedModel, target: LoadedModel) -> bool:
    """Whether the draft's encoder is a copy of the target's (compared once per pair of loaded models)."""
    known = _SAME_ENCODER.setdefault(draft.model, weakref.WeakKeyDictionary())
    if target.model not in known:
        a, b = draft.model.encoder.state_dict(), target.model.encoder.state_dict()
        known[target.model] = a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and torch.equal(a[k].to(b[k].dtype), b[k]) for k in a
        )
    return known[target.model]


# Keyed by the target's modules, weakly: a model freed and another built at its address never share a draft.
_SELF_DECODERS: weakref.WeakKeyDictionary[nn.Module, dict[torch.dtype, TextDecoder]]
_SELF_DECODERS = weakref.WeakKeyDictionary()
_NATIVE_DRAFTS: weakref.WeakKeyDictionary[nn.Module, NativeDraft] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def self_draft_dtype(device: torch.device, beam_search: bool) -> torch.dtype:
    """The self draft's weight dtype. On a CPU, one greedy row: int8 weights (Int8Linear) with bf16
    cross-attention keys/values, 6.2-6.8 ms a step of base, fp16 7.3-8.6 ms, bf16 13 ms, the fp32 target
    13-15 ms; a beam draft's 10 rows: bf16 (packed), where fp16 took 64 ms (2 cores, Zen 4). A GPU: fp16."""
    if device.type != "cpu":
        return torch.float16
    return torch.bfloat16 if beam_search else torch.int8


def self_draft_cross_dtype(weights: torch.dtype) -> torch.dtype | None:
    """The dtype of the self draft's copy of the window's cross-attention keys/values (None: the
    target's own, shared): bf16 beside int8 weights, see cross_attend."""
    return torch.bfloat16 if weights == torch.int8 else None


def make_drafter(spec: str, target: LoadedModel, beam_search: bool = False) -> Drafter:
    """The drafter named by `spec` ("none", "self", or a model name) for `target`; `beam_search` picks the
    self draft's weights for proposing many rows at a time.

    Heavy parts are built once per process and shared; each call returns a drafter with its own cache.
    """
    if spec == "none":
        return Drafter()
    eot = target.tokenizer.eot
    if spec == "self":
        dtype = self_draft_dtype(target.device, beam_search)
        with _LOCK:
            # the kernel keeps the target's cache layout, float32 (a bf16 or fp16 target on a CPU drafts in
            # PyTorch)
            native_ok = dtype == torch.int8 and target.dtype == torch.float32
            if native_ok and (lib := native_library()) is not None:
                if target.model not in _NATIVE_DRAFTS:
                    _NATIVE_DRAFTS[target.model] = NativeDraft(target.model.decoder, lib)
                native = _NATIVE_DRAFTS[target.model]
                return DecoderDrafter("self", target.model.decoder, eot, share_cross=True, native=native)
            decoders = _SELF_DECODERS.setdefault(target.model, {})
            if dtype not in decoders:
                decoders[dtype] = self_draft_decoder(target, dtype)
            decoder = decoders[dtype]
        return DecoderDrafter(
            "self", decoder, eot, share_cross=True, cross_dtype=self_draft_cross_dtype(dtype)
        )
    if not spec:
        raise InvalidOptionError("draft must be 'self', 'none', or a model name")
    draft = load_model(spec, device=target.device)
    check_compatible(draft, target)
    with _LOCK:
        encoder = None if _same_encoder(draft, target) else draft.model.encoder
    return DecoderDrafter(spec, draft.model.decoder, eot, encoder=encoder)
