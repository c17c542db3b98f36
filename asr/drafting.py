"""Drafters: cheap proposers of the next k tokens (q, the draft distribution, taken greedily).

A drafter is two methods (the idea of transformers' candidate generators): `propose(tokens, k)` continues
the committed prefix with up to k tokens, applying Whisper's rules at each position with that position's
own prefix; `start(window)` readies it for a new 30-s window. It keeps its own KV cache and, on the next
proposal, crops it back to the longest prefix it shares with what the target committed.

- `none`: proposes nothing; the loop is then plain greedy decoding with the target alone.
- `self`: a cheap copy of the target's own decoder (fp16 linears and head) that reads the target's encoder
  output and cross-attention keys/values: nothing more to load, no second encoder pass.
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
from .model import TextDecoder
from .models import LoadedModel, load_model

logger = logging.getLogger("asr")


@dataclass
class Window:
    """What a drafter may use of the current window: the target's encoder output and the log-mel input."""

    audio_features: Tensor  # shape = (1, n_audio_ctx, n_audio_state), from the target's encoder
    mel: Tensor  # shape = (n_mels, N_FRAMES)
    filters: Sequence[LogitFilter]
    target_cache: KVCache  # the target's cache, after its pass over the prompt
    tokens: list[int]  # the committed tokens; the target's cache holds all but the last


class Drafter:
    name = "none"

    def start(self, window: Window) -> None:
        """Forget the previous window and prepare for this one."""

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens continuing `tokens` (the committed sequence, prompt included)."""
        return []

    @property
    def n_passes(self) -> int:
        """Forward passes run so far (for the figures)."""
        return 0


class DecoderDrafter(Drafter):
    """Greedy proposals from a Whisper decoder with its own KV cache."""

    def __init__(
        self,
        name: str,
        decoder: TextDecoder,
        eot: int,
        encoder: nn.Module | None = None,
        share_cross: bool = False,
    ) -> None:
        self.name = name
        self.decoder = decoder
        self.encoder = encoder  # None: the decoder reads the target's encoder output
        # A copy of the target's decoder has the target's cross-attention projections: it reads the keys and
        # values the target computed for the window instead of projecting the audio again.
        self.share_cross = share_cross
        self.eot = eot
        self.cache: KVCache | None = None
        self.fed: list[int] = []  # the tokens whose keys/values are in self.cache
        self.filters: Sequence[LogitFilter] = ()
        self._n_passes = 0

    @property
    def n_passes(self) -> int:
        return self._n_passes

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.positional_embedding.dtype

    def start(self, window: Window) -> None:
        self.filters = window.filters
        if self.share_cross:
            # Start from the target's keys/values: no audio projection, and no prompt pass of our own (a
            # conditioned window's prompt is up to 224 tokens, costly in fp16 on a CPU).
            target = window.target_cache
            cache = self.decoder.cache_with_cross(target.cross_k, target.cross_v, n_batch=1)
            n = target.length
            cache.self_k[:, :, :, :n] = target.self_k[:, :1, :, :n]
            cache.self_v[:, :, :, :n] = target.self_v[:, :1, :, :n]
            cache.length = n
            self.cache = cache
            self.fed = list(window.tokens[:n])
            return
        features = window.audio_features
        if self.encoder is not None:
            features = self.encoder(window.mel.unsqueeze(0).to(self.dtype))
        self.cache = self.decoder.new_cache(features.to(self.dtype), n_batch=1)
        self.fed = []

    def propose(self, tokens: list[int], k: int) -> list[int]:
        assert self.cache is not None, "start() first"
        n_shared = 0
        limit = min(len(self.fed), len(tokens))
        while n_shared < limit and self.fed[n_shared] == tokens[n_shared]:
            n_shared += 1
        self.cache.crop(n_shared)
        del self.fed[n_shared:]
        room = self.cache.n_ctx - len(tokens)
        k = min(k, room)
        pending = tokens[n_shared:]
        proposal: list[int] = []
        device = self.decoder.positional_embedding.device
        for _ in range(k):
            logits = self.decoder(torch.tensor([pending], device=device), self.cache)[0, -1:]
            self._n_passes += 1
            self.fed.extend(pending)
            apply_filters(self.filters, logits, [tokens + proposal])
            token = int(logits.argmax())
            proposal.append(token)
            if token == self.eot:
                break
            pending = [token]
        return proposal


class CastLinear(nn.Module):
    """A linear layer whose weights are stored in a cheaper dtype; float32 in, float32 out.

    On this CPU an fp16 GEMV of the decoder's shapes runs ~5x faster than fp32 (it reads half the bytes, with
    a better kernel), and Whisper's released weights are fp16 to begin with: only the activations are rounded.
    """

    def __init__(self, linear: nn.Linear, dtype: torch.dtype) -> None:
        super().__init__()
        # Output-major whatever the source's layout: fp16 products run ~40x slower here on a transposed one.
        weight = linear.weight.detach().to(dtype).contiguous()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(linear.bias.detach().to(dtype), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.nn.functional.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def self_draft_decoder(target: LoadedModel, dtype: torch.dtype = torch.float16) -> TextDecoder:
    """A cheap copy of the target's decoder: linears and vocabulary head in `dtype` (fp16), the rest as in
    the target. Measured on 8 English clips with base: every proposed token accepted, where an int8 copy
    had 69% and a head cut to the first 16k tokens 71% (ids do not follow English frequency)."""
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
            setattr(owner, name, CastLinear(getattr(owner, name), dtype))
    decoder.pack_head(dtype=dtype)
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
_SELF_DECODERS: weakref.WeakKeyDictionary[nn.Module, TextDecoder] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def make_drafter(spec: str, target: LoadedModel) -> Drafter:
    """The drafter named by `spec` ("none", "self", or a model name) for `target`.

    Heavy parts are built once per process and shared; each call returns a drafter with its own cache.
    """
    if spec == "none":
        return Drafter()
    eot = target.tokenizer.eot
    if spec == "self":
        with _LOCK:
            decoder = _SELF_DECODERS.get(target.model)
            if decoder is None:
                decoder = _SELF_DECODERS[target.model] = self_draft_decoder(target)
        return DecoderDrafter("self", decoder, eot, share_cross=True)
    if not spec:
        raise InvalidOptionError("draft must be 'self', 'none', or a model name")
    draft = load_model(spec, device=target.device)
    check_compatible(draft, target)
    with _LOCK:
        encoder = None if _same_encoder(draft, target) else draft.model.encoder
    return DecoderDrafter(spec, draft.model.decoder, eot, encoder=encoder)
